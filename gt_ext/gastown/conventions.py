"""The conventions a role model is trained on, read from a town: what its fingerprint hashes.

    read_conventions(town_root, role, prime=True) -> {key: ConventionItem}

One item per:
- `doc`: every CLAUDE.md and AGENTS.md of the town and its rigs (depth <= 5, VCS and data folders
  skipped; a symlink to one of them counted once), key `<rig or town>:<relpath>` (the corpus
  artifact key of the same file);
- `formula`: every `*.formula.toml` in a beads folder's `formulas/` (town and rigs);
- `settings`: town and rig `settings/config.json` and `settings/agents.json`, without what a
  deployment writes (`role_agents`, `agents["node0-*"]`): deploying a model is not a convention;
- `directive`: the role's own `directives/<role>.md`, town and rig;
- `prime`: the real `gt prime --dry-run` of the role, per rig for rig roles: its role context
  (template, directives), without gt's per-run session banner nor what describes the moment
  (hooked work, patrol status, startup protocol; `prime.role_context`); key
  `<rig or town>:gt-prime:<role>`.

An item that cannot be read (permissions, not UTF-8, gt failing) carries `error` instead of text:
the caller reports it per item and goes on.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from gt_ext.gastown.settings import GT_NEW_TOWN_SETTINGS
from gt_ext.gastown.town import Town

log = logging.getLogger(__name__)

DOC_NAMES = ("CLAUDE.md", "AGENTS.md")
SKIP_DIRS = {".git", "node_modules", ".corpus", ".rag", ".models", ".dolt-data", "embeddeddolt", ".venv",
             "__pycache__", ".runtime"}
MAX_DEPTH = 5
# Keys a deployment writes into gt settings (gt_ext.registry.deploy): left out of the hash.
DEPLOY_AGENT_PREFIX = "node0-"
KINDS = ("doc", "formula", "settings", "directive", "prime")


@dataclass
class ConventionItem:
    """One convention source: its text, or why it could not be read."""

    kind: str
    text: str | None = None
    error: str | None = None
    path: str | None = None  # relative to the town root (None for gt prime output)


def _scope(town_root: Path, path: Path) -> str:
    """`<rig>` when `path` is inside a rig folder, else `town` (the corpus artifact key's first part)."""
    parts = path.relative_to(town_root).parts[:-1]
    return parts[0] if parts and parts[0] not in ("mayor", "deacon", ".beads", "settings", "docs", "directives") \
        else "town"


def item_key(town_root: Path, path: Path) -> str:
    """`<rig or town>:<relpath>`: how the corpus keys the same file as an artifact."""
    return f"{_scope(town_root, path)}:{path.relative_to(town_root).as_posix()}"


def _read(town_root: Path, path: Path, kind: str) -> ConventionItem:
    rel = path.relative_to(town_root).as_posix()
    try:
        raw = path.read_bytes()
    except OSError as e:
        return ConventionItem(kind, error=f"unreadable ({e.strerror or type(e).__name__})", path=rel)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return ConventionItem(kind, error=f"not UTF-8 (byte {e.start})", path=rel)
    if kind == "settings":
        try:
            text = _without_deployments(text)
        except ValueError as e:
            return ConventionItem(kind, error=f"not valid JSON ({str(e).splitlines()[0][:80]})", path=rel)
    return ConventionItem(kind, text=text, path=rel)


def _without_deployments(text: str) -> str:
    """Settings JSON, canonical, without `role_agents` and the `node0-*` agents deploy writes."""
    obj = json.loads(text)
    if isinstance(obj, dict):
        obj.pop("role_agents", None)
        if isinstance(obj.get("agents"), dict):
            obj["agents"] = {k: v for k, v in obj["agents"].items() if not str(k).startswith(DEPLOY_AGENT_PREFIX)}
            if not obj["agents"]:
                del obj["agents"]  # a deploy into a file without agents adds the key: no convention
    return json.dumps(obj, indent=1, sort_keys=True) + "\n"


def _docs(town_root: Path) -> list[Path]:
    """CLAUDE.md / AGENTS.md files, each file once: gt makes `AGENTS.md -> CLAUDE.md` symlinks, and
    one file under two names is one convention (the real name is kept)."""
    found: dict[Path, Path] = {}
    base = len(town_root.parts)
    for root, dirs, files in os.walk(town_root):
        depth = len(Path(root).parts) - base
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and depth < MAX_DEPTH)
        for f in sorted(files):
            if f in DOC_NAMES:
                p = Path(root) / f
                real = p.resolve()
                if real not in found or found[real].is_symlink():
                    found[real] = p
    return sorted(found.values())


def read_conventions(town_root: str | os.PathLike, role: str, prime: bool = True,
                     env: dict[str, str] | None = None) -> dict[str, ConventionItem]:
    """Every convention item of `town_root` that shapes `role` (module docstring), by key."""
    from gt_ext.gastown.prime import gt_prime, prime_targets, role_context, stable_text

    root = Path(town_root).resolve()
    town = Town(root)
    rigs = town.rigs()
    items: dict[str, ConventionItem] = {}
    for p in _docs(root):
        items[item_key(root, p)] = _read(root, p, "doc")
    for beads in town.beads_dirs().values():
        fdir = beads / "formulas"
        if fdir.is_dir() and fdir.resolve().is_relative_to(root):
            for p in sorted(fdir.glob("*.formula.toml")):
                items[item_key(root, p.resolve())] = _read(root, p.resolve(), "formula")
    for home in [root] + [r.root for r in rigs]:
        for name in ("config.json", "agents.json"):
            p = home / "settings" / name
            if p.is_file():
                items[item_key(root, p)] = _read(root, p, "settings")
            elif home == root and name == "config.json":  # gt reads a missing one as its defaults
                items[item_key(root, p)] = ConventionItem("settings", _without_deployments(
                    json.dumps(GT_NEW_TOWN_SETTINGS)), path=p.relative_to(root).as_posix())
        d = home / "directives" / f"{role}.md"
        if d.is_file():
            items[item_key(root, d)] = _read(root, d, "directive")
    if prime:
        for t in prime_targets(root):
            if t.role != role:
                continue
            key = f"{t.rig or 'town'}:gt-prime:{role}"
            out = gt_prime(role, root, t.rig, t.workdir, dry_run=True, env=env)
            items[key] = ConventionItem("prime", text=role_context(stable_text(out))) if out is not None else \
                ConventionItem("prime", error="gt prime --dry-run failed (see the log)")
    return dict(sorted(items.items()))


__all__ = ["KINDS", "ConventionItem", "item_key", "read_conventions"]
