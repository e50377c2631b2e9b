"""The improve-role formula: its steps in order, its training steps gated by the stale decision,
and a finished job followed by a new one (restart_when_done), not by nothing."""

from __future__ import annotations

import json
import sys

from gt_ext.cli import main
from gt_ext.orchestrate.formula import find_formula
from gt_ext.orchestrate.runner import next_job_dir


def test_improve_role_steps_in_order_and_gated():
    f = find_formula("improve-role")
    assert f is not None and f.restart_when_done
    steps = [s.id for s in f.ordered_steps()]
    assert steps == ["collect", "stale-check", "export-corpus", "validate", "train", "export", "eval", "register",
                     "report"]
    gated = {s.id for s in f.steps if s.run and s.run.startswith("gt-ext loop when-stale")}
    assert gated == {"export-corpus", "validate", "train", "export", "eval", "register"}  # deploy is not a step
    assert all("deploy" not in (s.run or "") for s in f.steps)


def test_when_stale_runs_the_command_only_when_retraining(tmp_path, capsys):
    marker = tmp_path / "ran"
    cmd = ["--", sys.executable, "-c", f"open({str(marker)!r}, 'w').write('x')"]
    decision = tmp_path / "stale.json"
    decision.write_text(json.dumps({"retrain": False}))
    assert main(["loop", "when-stale", str(decision), *cmd]) == 0
    assert not marker.exists() and "skipped (the deployed model is not stale)" in capsys.readouterr().out
    assert main(["loop", "when-stale", str(decision), "--force", "true", *cmd]) == 0 and marker.exists()
    marker.unlink()
    decision.write_text(json.dumps({"retrain": True}))
    assert main(["loop", "when-stale", str(decision), *cmd]) == 0 and marker.exists()
    failing = ["--", sys.executable, "-c", "raise SystemExit(3)"]
    assert main(["loop", "when-stale", str(decision), *failing]) == 3
    assert main(["loop", "when-stale", str(tmp_path / "none.json"), *cmd]) == 2
    assert "no stale decision" in capsys.readouterr().err


def test_a_finished_job_is_followed_by_a_new_one(tmp_path):
    f = find_formula("improve-role")
    jd = tmp_path / "improve-role-witness-abc"
    assert next_job_dir(f, jd) == jd
    jd.mkdir()
    (jd / "formula-state.json").write_text(json.dumps({"completed": ["collect", "stale-check"]}))
    assert next_job_dir(f, jd) == jd  # unfinished: resume it
    (jd / "formula-state.json").write_text(json.dumps({"completed": [s.id for s in f.steps]}))
    assert next_job_dir(f, jd) == tmp_path / "improve-role-witness-abc-2"
    train = find_formula("train-role-model")
    assert not train.restart_when_done and next_job_dir(train, jd) == jd
