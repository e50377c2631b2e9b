"""Hooks in Gas Town's own files: bd's per-beads-folder hooks and gt's Claude hooks-override layer.

    install_bead_hook(beads_dir, "on_close", script, marker, sidecars)  -> installed|updated|chained
    bead_hook_state(beads_dir, "on_close", marker)                       -> {"state", "chained"}
    add_hook_override(gt_home, target, "Stop", matcher, command)          -> added|present
    default_gt_home()                                                    -> gt's user folder

bd runs `<beads>/hooks/<name>` (e.g. `on_close <id> close`, issue JSON on stdin). A hook that is
not ours (no `marker` in it) is kept as `<name>.chained`, for our hook to run after itself.
gt merges `<gt home>/hooks-overrides/<target>.json` into every managed `.claude/settings.json` on
`gt hooks sync`, so an entry there survives syncs. Everything else in those files is kept.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from gt_ext.atomic import atomic_write_bytes, atomic_write_json
from gt_ext.errors import GtExtError

HOOKS_DIR = "hooks"
OVERRIDES_DIR = "hooks-overrides"


def default_gt_home() -> Path:
    """gt's user folder as gt itself finds it: $GT_EXT_GT_HOME, else `$GT_HOME/.gt`, else ~/.gt."""
    if os.environ.get("GT_EXT_GT_HOME"):
        return Path(os.environ["GT_EXT_GT_HOME"])
    if os.environ.get("GT_HOME"):
        return Path(os.environ["GT_HOME"]) / ".gt"
    return Path.home() / ".gt"


def bead_hooks_dir(beads_dir: str | os.PathLike) -> Path:
    """`<beads>/hooks/`, where bd looks for hook executables."""
    return Path(beads_dir) / HOOKS_DIR


def _is_ours(path: Path, marker: str) -> bool:
    try:
        return marker in path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


def install_bead_hook(beads_dir: str | os.PathLike, name: str, script: bytes, marker: str,
                      sidecars: dict[str, bytes | None] | None = None) -> str:
    """Install `script` as `<beads>/hooks/<name>`; returns installed | updated | chained.

    `sidecars`: files written next to the hook first (None deletes one), e.g. its configuration.
    A foreign hook already there becomes `<name>.chained` (an error if that name is taken too)."""
    hooks = bead_hooks_dir(beads_dir)
    hooks.mkdir(parents=True, exist_ok=True)
    target = hooks / name
    state = "installed"
    if target.exists() or target.is_symlink():
        if _is_ours(target, marker):
            state = "updated"
        else:
            chained = hooks / f"{name}.chained"
            if chained.exists():
                raise GtExtError(f"{target} is not ours and {chained} already exists: move one of them away first")
            os.replace(target, chained)
            if not os.access(chained, os.X_OK):
                os.chmod(chained, chained.stat().st_mode | 0o111)
            state = "chained"
    for fname, data in (sidecars or {}).items():
        p = hooks / fname
        if data is None:
            p.unlink(missing_ok=True)
        else:
            atomic_write_bytes(p, data, mode=0o644)
    atomic_write_bytes(target, script, mode=0o755)
    return state


def bead_hook_state(beads_dir: str | os.PathLike, name: str, marker: str) -> dict[str, Any]:
    """{"state": ours | foreign | none, "chained": bool} for `<beads>/hooks/<name>`."""
    hooks = bead_hooks_dir(beads_dir)
    hook = hooks / name
    ours = hook.is_file() and _is_ours(hook, marker)
    return {"state": "ours" if ours else ("foreign" if hook.exists() else "none"),
            "chained": (hooks / f"{name}.chained").exists()}


def add_hook_override(gt_home: str | os.PathLike, target: str, event: str, matcher: str, command: str) -> str:
    """Add a command hook for `event` to `<gt_home>/hooks-overrides/<target>.json`, keeping
    everything else; returns added | present.

    gt refuses an override file with two entries of one matcher, so when an entry with `matcher`
    is already there the command joins its hooks instead of adding a second entry."""
    path = Path(gt_home) / OVERRIDES_DIR / f"{target.replace('/', '__')}.json"
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = json.loads(path.read_text(encoding="utf-8") or "{}")
        except json.JSONDecodeError as e:
            raise GtExtError(f"{path}:{e.lineno}: invalid JSON, not modified") from None
        if not isinstance(data, dict):
            raise GtExtError(f"{path}: expected a JSON object, not modified")
    entries = data.setdefault(event, [])
    if not isinstance(entries, list):
        raise GtExtError(f"{path}: {event} must be a list, not modified")
    for e in entries:
        for h in (e.get("hooks") or []) if isinstance(e, dict) else []:
            if isinstance(h, dict) and h.get("command") == command:
                return "present"
    ours = {"type": "command", "command": command}
    shared = next((e for e in entries if isinstance(e, dict) and e.get("matcher") == matcher), None)
    if shared is not None:
        if not isinstance(shared.get("hooks"), list):
            raise GtExtError(f"{path}: {event} entry {matcher!r} has no hooks list, not modified")
        shared["hooks"].append(ours)
    else:
        entries.append({"matcher": matcher, "hooks": [ours]})
    atomic_write_json(path, data)
    return "added"
