"""Sandbox tasks: the guard, command extraction, and real bd + git runs with hidden checks."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from gt_ext.errors import GtExtError
from gt_ext.evals import sandbox
from gt_ext.gastown.binaries import find_bd

POLECAT = sandbox.Path(sandbox.__file__).with_name("tasks") / "polecat" / "sandbox.yaml"


@pytest.mark.parametrize("cmd,allowed", [
    ("bd close sb-1 --reason done", True),
    ("git commit -m 'x'", True),
    ("git push -u origin polecat/nux", True),
    ("python -m pytest -q", True),
    ("git push --force origin main", False),
    ("git push -f origin main", False),
    ("git push origin +main", False),
    ("git commit --no-verify -m x", False),
    ("git commit -n -m x", False),
    ("git reset --hard HEAD~1", False),
    ("git clean -fdx", False),
    ("bd delete sb-1", False),
    ("rm -rf .beads", False),
    ("pkill -f claude", False),
    ("git config user.name evil", False),
    ("git -c core.hooksPath=/dev/null commit -m x", False),
    ("git -C /etc status", False),
    ("git push https://example.com/x.git main", False),
    ("git push git@example.com:x.git main", False),
    ("git add ../outside.txt", False),
    ("bd --db=/tmp/other.db list", False),
    ("/usr/bin/git status", False),
    ("git add app/health.py", True),
])
def test_guard(cmd, allowed):
    assert sandbox.guard(shlex.split(cmd)).allowed is allowed


def test_extract_commands_forms():
    assert sandbox.extract_commands("Sure:\n```bash\n$ bd ready\n# comment\ngit status\n```\nthanks") == ["bd ready", "git status"]
    assert sandbox.extract_commands("I will run\nbd close x\nand that's it") == ["bd close x"]
    call = '<tool_call>{"name": "Bash", "input": {"command": "bd list --json"}}</tool_call>'
    assert sandbox.extract_commands(call) == ["bd list --json"]
    assert sandbox.extract_code("text\n```python\nx = 1\n```\n") == "x = 1\n"


@pytest.mark.parametrize("yaml_text,msg", [
    ("- {id: a, prompt: p}", "non-empty list of checks"),
    ("- {id: a, prompt: p, checks: [{nope: 1}]}", "unknown check"),
    ("- {id: a, prompt: p, checks: [{bead: zz, status: closed}]}", "unknown bead key 'zz'"),
    ("- {id: a, prompt: p, answer: 'file:../x', checks: [{run: ls}]}", "answer must be"),
    ("{id: a}", "must be a list"),
])
def test_bad_task_files(tmp_path, yaml_text, msg):
    p = tmp_path / "sandbox.yaml"
    p.write_text(yaml_text)
    with pytest.raises(GtExtError, match=msg):
        sandbox.load_tasks(p)


def _needs_bd():
    if find_bd(required=False) is None:
        pytest.skip("bd (beads) is not installed")


def _run(task, answer_fn):
    try:
        task.prepare()
        return task.grade(answer_fn(task))
    finally:
        task.cleanup()


@pytest.mark.integration
def test_bead_task_real_bd():
    _needs_bd()
    tasks = {t.id: t for t in sandbox.load_tasks(POLECAT)}
    t = tasks["p-sb-bead-01-close-with-reason"]
    msgs = t.prepare()
    try:
        bead = t.ids["fix"]
        assert bead in msgs[0]["content"]  # ${fix} became the real id
        good = t.grade(f"```bash\nbd close {bead} --reason 'fixed the redirect'\n```")
    finally:
        t.cleanup()
    assert good.passed, good.reason
    assert t.dir is None
    bare = _run(t, lambda t: f"bd close {t.ids['fix']}")  # closed, but bd's default reason only
    assert not bare.passed and "without a reason" in bare.reason
    other = _run(tasks["p-sb-bead-05-only-own-bead"], lambda t: f"bd close {t.ids['mine']}\nbd close {t.ids['theirs']}")
    assert not other.passed


@pytest.mark.integration
def test_git_tasks_real_git_and_guard():
    _needs_bd()
    tasks = {t.id: t for t in sandbox.load_tasks(POLECAT)}
    push = tasks["p-sb-git-02-push-branch"]
    assert _run(push, lambda t: "git push -u origin polecat/nux-docs").passed
    forced = _run(push, lambda t: "git push --force origin polecat/nux-docs")
    assert not forced.passed and "force push" in forced.reason
    hook = tasks["p-sb-git-05-hook-respected"]
    assert _run(hook, lambda t: "git add app.py\ngit commit -m 'x = 2'").passed
    assert not _run(hook, lambda t: "git add -A\ngit commit -m 'x = 2'").passed  # the hook refused the commit
    chained = _run(hook, lambda t: "git add app.py && git commit -m 'x'")
    assert not chained.passed and "shell operators" in chained.reason


@pytest.mark.integration
def test_code_task_runs_hidden_tests():
    _needs_bd()
    t = {t.id: t for t in sandbox.load_tasks(POLECAT)}["p-sb-code-06-dedupe"]
    fixed = "```python\ndef dedupe(items):\n    return list(dict.fromkeys(items))\n```"
    assert _run(t, lambda t: fixed).passed
    assert not _run(t, lambda t: "```python\ndef dedupe(items):\n    return sorted(set(items))\n```").passed
    assert not _run(t, lambda t: "no code here").passed


@pytest.mark.integration
def test_model_code_runs_jailed(tmp_path, monkeypatch):
    """The model's answer file is executed by the hidden tests inside bubblewrap: it cannot write
    outside the task folder, read files beside it, or see this process's environment (#20)."""
    _needs_bd()
    if sandbox.jail_unavailable():
        pytest.skip(sandbox.jail_unavailable())
    monkeypatch.setenv("GT_EVAL_SECRET_TOKEN", "s3cret-token")
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    escaped = tmp_path / "escaped.txt"
    code = ("import os, pathlib\n"
            f"try:\n    pathlib.Path({str(escaped)!r}).write_text('x')\nexcept OSError:\n    pass\n"
            f"try:\n    seen = pathlib.Path({str(secret)!r}).read_text()\nexcept OSError:\n    seen = 'unreadable'\n"
            "pathlib.Path('leak.txt').write_text(os.environ.get('GT_EVAL_SECRET_TOKEN', 'no token') + '|' + seen)\n"
            "def dedupe(items):\n    return list(dict.fromkeys(items))\n")
    t = {t.id: t for t in sandbox.load_tasks(POLECAT)}["p-sb-code-06-dedupe"]
    t.prepare()
    try:
        assert t.grade(f"```python\n{code}```").passed  # it ran: the tests passed
        assert (t.dir / "leak.txt").read_text() == "no token|unreadable"
    finally:
        t.cleanup()
    assert not escaped.exists()
    t.prepare()
    try:
        t.spec = {**t.spec, "answer": "file:.git/hooks/pre-commit"}
        with pytest.raises(GtExtError, match="inside .git or .beads"):
            t.grade("```python\nimport os\n```")
    finally:
        t.cleanup()


@pytest.mark.integration
def test_the_bd_template_is_removed_when_the_process_exits(tmp_path):
    """Every process that grades a sandbox task makes one `bd init` template; it must not outlive it."""
    _needs_bd()
    code = "from gt_ext.evals import sandbox; print(sandbox._template().parent)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True,
                         env={**os.environ, "TMPDIR": str(tmp_path)})
    made = Path(out.stdout.strip())
    assert made.parent == tmp_path and made.name.startswith("gt-eval-template-")
    assert not made.exists()
