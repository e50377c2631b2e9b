"""A suite written in promptfoo's own format runs unchanged and its verdicts match promptfoo's.

fixtures/pf_echo/expected.json was produced by running the real promptfoo (0.121.20, `echo`
provider) on fixtures/pf_echo; here the same suite runs through gt_ext.evals with the same echo
behaviour, and every pass/fail and score must agree. Set PROMPTFOO_BIN to re-run real promptfoo.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from gt_ext.evals import jsrun, runner
from gt_ext.evals import suite as suite_mod

FIXTURES = Path(__file__).parent / "fixtures"
pytestmark = pytest.mark.skipif(jsrun.node_binary() is None, reason="node is not installed")


def _echo(batch, params):
    # promptfoo's `echo` provider: the answer is the rendered prompt itself.
    return [msgs[-1]["content"] for msgs in batch]


def _key(description, answer):
    # promptfoo's JSON output re-serialises vars; only the expanded array test needs the answer.
    return (description, str(answer) if description == "array-vars-expand" else "")


def _ours(engine="auto"):
    st = suite_mod.load(FIXTURES / "pf_echo")
    res = runner.evaluate("base:tiny-llama", st, generate=_echo, write=False, engine=engine)
    return st, res


def _expected() -> list[dict]:
    """promptfoo's own verdicts on the fixture (the counts below all come from this file)."""
    return json.loads((FIXTURES / "pf_echo" / "expected.json").read_text())["results"]


def test_every_verdict_matches_promptfoo():
    expected = _expected()
    st, res = _ours()
    ours = {}
    for task, tr in zip(st.tasks, res.tasks, strict=True):
        ours[_key(task.test.description, task.test.vars["answer"])] = tr.samples[0]
    assert len(ours) == len(expected) and len(expected) > 0
    for e in expected:
        s = ours[_key(e["description"], e["answer"])]
        if e["error"]:
            # promptfoo's own run errored (llm-rubric with its default grader needs an OpenAI key);
            # here the configured local grader grades it, through the real promptfoo.
            assert s.meta.get("engine") == "promptfoo" or "needs the real promptfoo" in s.reason, (e["description"], s)
            continue
        assert not s.skipped, e["description"]
        assert s.passed == e["pass"], (e["description"], s.reason)
        assert s.score == pytest.approx(e["score"], abs=1e-3), e["description"]


def test_skipped_tasks_are_out_of_the_score():
    """What promptfoo could not run is skipped and out of the totals (saying why); what it passed, we pass."""
    expected = _expected()
    errored = sorted({e["description"] for e in expected if e["error"]})
    ran = [e for e in expected if not e["error"]]
    _, res = _ours(engine="ours")  # in process only: the llm-rubric test cannot be graded, and says why
    d = res.to_dict()
    assert errored and sorted(set(d["skipped"])) == errored
    assert any("assertion 'llm-rubric'" in t["reason"] for t in d["tasks"] if t["skipped"])
    assert sum(c["total"] for c in d["categories"].values()) == len(ran)
    assert sum(c["passed"] for c in d["categories"].values()) == sum(e["pass"] for e in ran)


@pytest.mark.integration
def test_real_promptfoo_agrees(tmp_path):
    """Re-run the real promptfoo on the fixture (only where PROMPTFOO_BIN points at it)."""
    binary = os.environ.get("PROMPTFOO_BIN")
    if not binary or not shutil.which(binary):
        pytest.skip("PROMPTFOO_BIN not set to a promptfoo executable")
    work = tmp_path / "suite"
    shutil.copytree(FIXTURES / "pf_echo", work)
    env = {**os.environ, "PROMPTFOO_DISABLE_TELEMETRY": "1", "PROMPTFOO_DISABLE_UPDATE": "1"}
    subprocess.run([binary, "eval", "-c", "promptfooconfig.yaml", "--no-cache", "-o", "out.json", "--no-table"],
                   cwd=work, env=env, capture_output=True, timeout=600)
    pf = json.loads((work / "out.json").read_text())["results"]["results"]
    st, res = _ours()
    ours = {_key(t.test.description, t.test.vars["answer"]): r.samples[0] for t, r in zip(st.tasks, res.tasks, strict=True)}
    for r in pf:
        s = ours[_key(r["testCase"]["description"], r["testCase"]["vars"]["answer"])]
        if r.get("failureReason") == 2:  # promptfoo could not run it (llm-rubric without an API key)
            assert s.meta.get("engine") == "promptfoo"  # ours: graded by the configured local grader
        else:
            assert s.passed == r["success"] and s.score == pytest.approx(r["score"], abs=1e-3)
