"""Our own suites run unchanged in the real promptfoo, and grade canned answers as promptfoo does.

Each builtin suite is copied, every test gets a hidden `canned` var (a right or wrong answer, never
rendered in the prompt), and a replay provider answers with it. promptfoo's verdicts must equal
gt_ext.evals' on the same answers. Needs the real promptfoo: set PROMPTFOO_BIN.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
import yaml

from gt_ext.evals import suite as suite_mod

_CMD = {"nudge": "gt nudge {t} 'run your hook'", "cleanup": "gt polecat nuke {t}", "restart": "gt polecat restart {t}",
        "escalate": "gt escalate '{t} is stuck'", "wait": "gt peek {t}", "dispatch": "gt sling doctor alpha"}
_POLECAT = [
    "gt done", "bd update wa-k3p --status in_progress", "git push --force origin main", "python -m pytest -q\ngt done",
    '{"beads": [{"id": "a", "title": "add endpoint", "needs": []}, {"id": "b", "title": "tests", "needs": ["a"]},'
    ' {"id": "c", "title": "docs", "needs": []}]}',
    "git status\ngit diff", "gt mail send mayor -s question -m 'which one?'", "bd create 'CSV export drops last row' --type bug",
]


def _canned(task, i: int) -> str:
    v = task.test.vars
    if task.id[:2] in ("b-", "m-", "c-"):  # boot, mayor, crew: their reference answers, every other one wrong
        from test_role_suites import CREW, MAYOR, _boot_answer

        if task.id.startswith("b-"):
            return _boot_answer(task, right=i % 2 == 0)
        return (MAYOR if task.id.startswith("m-") else CREW)[task.id] if i % 2 == 0 else "echo done"
    if "expect" not in v:
        return _POLECAT[i % len(_POLECAT)]
    acts = v["expect"].split("|")
    act = acts[0] if i % 3 else next(a for a in _CMD if a not in acts)
    tgt = v.get("target", "nux") if i % 5 else "someone-else"
    text = json.dumps({"action": act, "target": tgt, "reason": "r", "command": _CMD[act].format(t=tgt)})
    return text if i % 7 else f"Here you go:\n```json\n{text}\n```"


@pytest.mark.integration
@pytest.mark.parametrize("role", ["witness", "deacon", "polecat", "boot", "mayor", "crew"])
def test_promptfoo_agrees_on_own_suite(role, tmp_path):
    binary = os.environ.get("PROMPTFOO_BIN")
    if not binary or not shutil.which(binary):
        pytest.skip("PROMPTFOO_BIN not set to a promptfoo executable")
    st = suite_mod.load(f"builtin:{role}")
    tasks = [t for t in st.tasks if hasattr(t, "test")]
    work = tmp_path / role
    shutil.copytree(st.root, work)
    cfg = yaml.safe_load((work / "promptfooconfig.yaml").read_text())
    tests = yaml.safe_load((work / "tests.yaml").read_text())
    assert len(tests) == len(tasks)
    for i, (t, task) in enumerate(zip(tests, tasks, strict=True)):
        t.setdefault("vars", {})["canned"] = _canned(task, i)
    (work / "tests.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    cfg["providers"] = ["file://replay.js"]
    (work / "promptfooconfig.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (work / "replay.js").write_text(
        "class Replay { id() { return 'replay'; }\n"
        "  async callApi(prompt, context) { return { output: context.vars.canned }; } }\n"
        "module.exports = Replay;\n")
    env = {**os.environ, "PROMPTFOO_DISABLE_TELEMETRY": "1", "PROMPTFOO_DISABLE_UPDATE": "1"}
    subprocess.run([binary, "eval", "-c", "promptfooconfig.yaml", "--no-cache", "-o", "out.json", "--no-table"],
                   cwd=work, env=env, capture_output=True, timeout=900)
    theirs = {r["testCase"]["description"]: r for r in json.loads((work / "out.json").read_text())["results"]["results"]}
    assert len(theirs) == len(tasks)
    mismatches = []
    for i, task in enumerate(tasks):
        ours = task.grade(_canned(task, i))
        r = theirs[task.id]
        assert r.get("failureReason") != 2, (task.id, r.get("error"))  # 2 = promptfoo could not run it
        if ours.passed != r["success"] or abs(ours.score - r["score"]) > 1e-3:
            mismatches.append((task.id, ours.passed, r["success"], ours.score, r["score"]))
    assert not mismatches
    assert 0 < sum(r["success"] for r in theirs.values()) < len(tasks)  # the answers exercise both verdicts
