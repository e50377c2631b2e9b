"""Proof that an eval result file was written by this user's `gt-ext eval run`.

An eval result written next to a model (`eval-<suite>.json` in a run or export folder) is later
picked up by `gt model register`. Anyone who can write that folder can also write a result that
says `gate: pass`, with the right file hashes; so the runner signs what it writes (HMAC-SHA256
over the canonical JSON, under a per-user key kept owner-only in `<GT_EXT_HOME>/keys/`), and the
registry trusts a found file only when the signature checks. A result from another machine or
user is recorded as untrusted: run the eval again here.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path
from typing import Any

from gt_ext.paths import home_dir
from gt_ext.private import private_dir

SIGNATURE = "signature"  # key inside the result's "run" object
KEY_FILE = "eval-results.key"


def key_path() -> Path:
    """Where this user's signing key lives."""
    return home_dir() / "keys" / KEY_FILE


def _key(create: bool) -> bytes | None:
    path = key_path()
    if not path.is_file():
        if not create:
            return None
        private_dir(path.parent)
        try:  # O_EXCL: two first runs at once agree on one key
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_bytes().strip() or None
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_bytes().strip() or None


def _mac(key: bytes, result: dict[str, Any]) -> str:
    run = {k: v for k, v in (result.get("run") or {}).items() if k != SIGNATURE}
    body = json.dumps({**result, "run": run}, sort_keys=True, separators=(",", ":"), default=str)
    return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()


def sign(result: dict[str, Any]) -> dict[str, Any]:
    """`result` with `run.signature` set (the key is made on first use)."""
    key = _key(create=True)
    assert key is not None
    run = dict(result.get("run") or {})
    run.pop(SIGNATURE, None)
    out = {**result, "run": run}
    run[SIGNATURE] = _mac(key, out)
    return out


def check(result: dict[str, Any]) -> str | None:
    """None when `result` carries a valid signature of this user's runner; else why not."""
    sig = (result.get("run") or {}).get(SIGNATURE)
    if not sig:
        return "it is not signed by gt-ext eval run"
    key = _key(create=False)
    if key is None or not hmac.compare_digest(str(sig), _mac(key, result)):
        return "its signature does not match (written or edited elsewhere)"
    return None
