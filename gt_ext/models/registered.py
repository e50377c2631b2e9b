"""Base models registered by path (`gt-ext models add`): a name for a local HF folder, with what
`gt_ext.models.family.describe` found in it (tokenizer family, chat template, license).

    add(path, name=None, license=None) -> dict    # validates the folder, records it under `name`
    get(name) -> dict | None
    all_bases() -> dict[str, dict]

Stored in $GT_EXT_HOME/bases.json, written atomically. A registered name works wherever a base
model name does (`base_model=NAME`, `--model base:NAME`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from gt_ext.atomic import atomic_write_json
from gt_ext.errors import GtExtError
from gt_ext.paths import home_dir

NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


def bases_file() -> Path:
    """Where registered bases are kept."""
    return home_dir() / "bases.json"


def all_bases() -> dict[str, dict[str, Any]]:
    """Every registered base, by name."""
    p = bases_file()
    if not p.is_file():
        return {}
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except ValueError:
        raise GtExtError(f"{p}: not valid JSON (fix or remove it)") from None
    if not isinstance(data, dict):
        raise GtExtError(f"{p}: expected a JSON object of name -> base")
    return data


def get(name: str) -> dict[str, Any] | None:
    """The record of a registered base, None if `name` is not registered."""
    return all_bases().get(name)


def add(path: str | Path, name: str | None = None, license: str | None = None) -> dict[str, Any]:
    """Register the HF folder `path` as a base (re-adding a name updates it); returns the record."""
    from gt_ext.models.base import KNOWN_MODELS
    from gt_ext.models.family import describe

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise GtExtError(f"models add {path}: no such folder")
    name = name or folder.resolve().name.lower()
    if not NAME_RE.fullmatch(name):
        raise GtExtError(f"models add: name {name!r} must be lowercase letters, digits, '.', '_' or '-' "
                         "(give one with --name)")
    if name in KNOWN_MODELS:
        raise GtExtError(f"models add: {name!r} is a built-in base model name; choose another with --name")
    rec = describe(folder)
    if license:
        rec["license"] = license
    rec["name"] = name
    bases = all_bases()
    bases[name] = rec
    atomic_write_json(bases_file(), bases)
    return rec
