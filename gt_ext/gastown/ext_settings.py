"""This project's own settings inside a town: `gt-ext.json` files next to gt's settings.

gt re-marshals its own settings files and drops keys it does not know, so gt-ext keeps its choices
in files of its own:

- town: `<town>/settings/gt-ext.json`, e.g. `{"evals": {"gate_suites": {"witness": "suites/witness"}}}`
- rig:  `<town>/<rig>/settings/gt-ext.json`, the rig's own choices, e.g. `{"corpus": {"share": true}}`
  (the rig opts in to sharing its corpus examples with the town's other rigs)

A missing file is an empty mapping; malformed JSON is a one-line error with `file:line`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from gt_ext.atomic import atomic_write_json
from gt_ext.errors import GtExtError

FILE_NAME = "gt-ext.json"


def town_file(town_root: str | os.PathLike) -> Path:
    """`<town>/settings/gt-ext.json`."""
    return Path(town_root) / "settings" / FILE_NAME


def rig_file(town_root: str | os.PathLike, rig: str) -> Path:
    """`<town>/<rig>/settings/gt-ext.json` (the rig's own settings folder, as gt lays it out)."""
    return Path(town_root) / rig / "settings" / FILE_NAME


def read(path: str | os.PathLike) -> dict[str, Any]:
    """The settings in `path` ({} when the file does not exist)."""
    p = Path(path)
    if not p.is_file():
        return {}
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise GtExtError(f"{p}:{e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise GtExtError(f"{p}: must hold a JSON object")
    return data


def write(path: str | os.PathLike, data: dict[str, Any]) -> None:
    """Write settings atomically (temp file + rename)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(path), data)


def section(path: str | os.PathLike, name: str) -> dict[str, Any]:
    """One top-level section (`corpus`, `evals`, ...) of a settings file, checked to be an object."""
    value = read(path).get(name) or {}
    if not isinstance(value, dict):
        raise GtExtError(f"{path}: `{name}` must be an object")
    return value


def rig_shares_corpus(town_root: str | os.PathLike, rig: str) -> bool:
    """Whether `rig` opted in to sharing its corpus examples with the other rigs of the town
    (`{"corpus": {"share": true}}` in its own settings). Default: no."""
    path = rig_file(town_root, rig)
    share = section(path, "corpus").get("share", False)
    if not isinstance(share, bool):
        raise GtExtError(f"{path}: corpus.share must be true or false, got {share!r}")
    return share


__all__ = ["FILE_NAME", "read", "rig_file", "rig_shares_corpus", "section", "town_file", "write"]
