"""`gt_ext/gastown/` is the only door to Gas Town: no other module runs gt, bd or dolt itself or
names one of Gas Town's own files (a static check over the source, so it covers code no test runs).

What counts as Gas Town's own files: its state and configuration formats, which gastown/ owns
(`.events.jsonl`, `mayor/town.json`, `mayor/rigs.json`, `<agent>/.runtime/session_id`,
`settings/config.json`, `agents.json`, `escalation.json`, gt's `hooks-overrides/`). Documents a
town holds (CLAUDE.md, formulas, directives) are content, read by the corpus and RAG as such.
Running a tool means a process whose program is the literal name `gt`, `bd`, `dolt` or `gt-real`
(found on PATH, where `gt` may be our own shim); the way in is `gastown.gt.Gt`, `gastown.bd.Bd`,
`gastown.dolt`, which run the real binaries (`gastown.binaries`).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "gt_ext"
DOOR = PKG / "gastown"
TOOLS = {"gt", "bd", "dolt", "gt-real"}
TOWN_FILES = {".events.jsonl", "town.json", "rigs.json", ".runtime", "agents.json", "escalation.json",
              "hooks-overrides"}
SPAWN_MODULES = {"subprocess", "os", "shutil"}  # subprocess.run, os.execv, shutil.which, ...
SPAWNERS = {"run", "Popen", "call", "check_call", "check_output", "system", "which", "getoutput",
            "execv", "execvp", "execve", "execvpe", "execl", "execlp", "spawnv", "spawnvp"}


def _outside_modules() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if DOOR not in p.parents)


def _program(node: ast.expr) -> str | None:
    """The program a spawn call's first argument names, when it is written as a literal."""
    if isinstance(node, ast.List | ast.Tuple) and node.elts:
        node = node.elts[0]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):  # ["gt"] + args
        return _program(node.left)
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value.split()[0] if node.value.split() else None
    return None


def _div_constants(node: ast.BinOp) -> set[str]:
    """String constants of a `a / "b" / "c"` path chain."""
    out: set[str] = set()
    for side in (node.left, node.right):
        if isinstance(side, ast.BinOp) and isinstance(side.op, ast.Div):
            out |= _div_constants(side)
        elif isinstance(side, ast.Constant) and isinstance(side.value, str):
            out.add(side.value)
    return out


def violations(path: Path, root: Path = PKG) -> list[str]:
    """Places in one module (of package folder `root`) that reach Gas Town around the door."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    rel = path.relative_to(root.parent)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args:
            f = node.func
            # subprocess.run(...), os.execv(...), shutil.which(...), or a bare Popen(...) import;
            # not gastown's own `Gt(...).run("dolt", ...)`, which is the door.
            spawn = (isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in SPAWN_MODULES
                     and f.attr in SPAWNERS) or (isinstance(f, ast.Name) and f.id in SPAWNERS - {"run"})
            prog = _program(node.args[0])
            if spawn and prog is not None and Path(prog).name in TOOLS:
                found.append(f"{rel}:{node.lineno}: runs {prog!r} itself")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in TOWN_FILES:
            found.append(f"{rel}:{node.lineno}: names Gas Town's {node.value!r}")
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            parts = _div_constants(node)
            if "settings" in parts and "config.json" in parts:
                found.append(f"{rel}:{node.lineno}: opens gt's settings/config.json")
    return found


def test_only_gastown_runs_gas_town_tools_or_opens_its_files() -> None:
    modules = _outside_modules()
    assert len(modules) > 80  # the scan sees the whole package
    bad = [v for p in modules for v in violations(p)]
    assert bad == [], "\n".join(bad)


@pytest.mark.parametrize("code, what", [
    ('import subprocess\nsubprocess.run(["gt", "dolt", "stop"])\n', "runs 'gt'"),
    ('import subprocess\nsubprocess.run(["bd"] + args, check=True)\n', "runs 'bd'"),
    ('import subprocess\nsubprocess.check_output("dolt sql -q x", shell=True)\n', "runs 'dolt'"),
    ('import shutil\nshutil.which("gt")\n', "runs 'gt'"),
    ('p = town / ".events.jsonl"\n', "'.events.jsonl'"),
    ('sid = (root / actor / ".runtime" / "session_id").read_text()\n', "'.runtime'"),
    ('cfg = root / "settings" / "config.json"\n', "settings/config.json"),
])
def test_the_check_catches_each_way_around_the_door(tmp_path: Path, code: str, what: str) -> None:
    """The check is not vacuous: each way around the door, written in a module, is reported."""
    mod = tmp_path / "gt_ext" / "corpus" / "sneaky.py"
    mod.parent.mkdir(parents=True)
    mod.write_text(code)
    got = violations(mod, tmp_path / "gt_ext")
    assert got and any(what in g for g in got), got


def test_the_door_itself_is_not_checked() -> None:
    assert any(violations(p) for p in sorted(DOOR.rglob("*.py")))  # gastown/ does this on purpose
