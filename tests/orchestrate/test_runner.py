"""The formula runner: executes steps in order, stops on failure, resumes where it stopped."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from gt_ext.errors import GtExtError
from gt_ext.orchestrate.formula import load_formula
from gt_ext.orchestrate.runner import job_dir_for, run_formula

PY = sys.executable


def make_formula(tmp_path: Path, fail_marker: Path) -> Path:
    # Each step appends its id to log.txt; step "two" fails while fail_marker exists.
    text = f'''
formula = "demo"
[vars.role]
required = true
[[steps]]
id = "one"
title = "first"
run = "{PY} -c 'open(\\"{{{{job_dir}}}}/log.txt\\",\\"a\\").write(\\"one:{{{{role}}}}\\\\n\\")'"
job_status = "training"
[[steps]]
id = "two"
title = "second"
needs = ["one"]
run = "{PY} -c 'import os,sys; open(\\"{{{{job_dir}}}}/log.txt\\",\\"a\\").write(\\"two\\\\n\\"); sys.exit(3 if os.path.exists(\\"{fail_marker}\\") else 0)'"
job_status = "evaluating"
[[steps]]
id = "three"
title = "third"
needs = ["two"]
run = "{PY} -c 'open(\\"{{{{job_dir}}}}/log.txt\\",\\"a\\").write(\\"three\\\\n\\")'"
'''
    p = tmp_path / "demo.formula.toml"
    p.write_text(text)
    return p


class Recorder:
    def __init__(self):
        self.events = []

    def step_started(self, step_id, status):
        self.events.append(("start", step_id, status))

    def step_finished(self, step_id):
        self.events.append(("finish", step_id))

    def failed(self, reason):
        self.events.append(("failed", reason))

    def stopped(self, reason):
        self.events.append(("stopped", reason))

    def done(self, status="done", reason=""):
        self.events.append(("done",) if status == "done" else ("done", status))


def test_runs_in_order_fails_cleanly_and_resumes(tmp_path):
    marker = tmp_path / "fail"
    marker.write_text("x")
    f = load_formula(make_formula(tmp_path, marker))
    job = tmp_path / "job"
    rec = Recorder()
    with pytest.raises(GtExtError, match="step two failed with exit code 3"):
        run_formula(f, {"role": "witness"}, job, tracker=rec)
    assert (job / "log.txt").read_text() == "one:witness\ntwo\n"
    assert rec.events[-1] == ("failed", "step two failed with exit code 3")
    assert json.loads((job / "formula-state.json").read_text())["completed"] == ["one"]

    marker.unlink()
    rec2 = Recorder()
    res = run_formula(f, {"role": "witness"}, job, tracker=rec2)
    assert res.skipped == ["one"] and res.ran == ["two", "three"]
    assert (job / "log.txt").read_text() == "one:witness\ntwo\ntwo\nthree\n"  # "one" not rerun
    assert rec2.events[0] == ("start", "two", "evaluating") and rec2.events[-1] == ("done",)


def test_bad_role_is_refused_before_anything_runs(tmp_path):
    f = load_formula(make_formula(tmp_path, tmp_path / "nofail"))
    with pytest.raises(GtExtError, match="unknown role 'bogus': roles are mayor, deacon"):
        run_formula(f, {"role": "bogus"}, tmp_path / "job")
    assert not (tmp_path / "job").exists()


def test_other_vars_in_same_job_dir_refused(tmp_path):
    f = load_formula(make_formula(tmp_path, tmp_path / "nofail"))
    run_formula(f, {"role": "witness"}, tmp_path / "job")
    with pytest.raises(GtExtError, match="other variables"):
        run_formula(f, {"role": "deacon"}, tmp_path / "job")


def test_job_dir_is_deterministic(tmp_path):
    f = load_formula(make_formula(tmp_path, tmp_path / "nofail"))
    a = job_dir_for(f, {"role": "witness"}, tmp_path)
    assert a == job_dir_for(f, {"role": "witness"}, tmp_path)
    assert a != job_dir_for(f, {"role": "deacon"}, tmp_path)
    assert a.name.startswith("demo-witness-")


def _outcome_formula(tmp_path: Path) -> Path:
    # Step "train" exits 3 while the marker file exists (a time limit); step "eval" exits 4 (gate).
    marker = tmp_path / "limit"
    text = f'''
formula = "outcomes"
[[steps]]
id = "train"
title = "train"
run = "{PY} -c 'import os,sys; open(\\"{{{{job_dir}}}}/log.txt\\",\\"a\\").write(\\"train\\\\n\\"); sys.exit(3 if os.path.exists(\\"{marker}\\") else 0)'"
exit_statuses = {{ "3" = "stopped" }}
[[steps]]
id = "eval"
title = "eval"
needs = ["train"]
run = "{PY} -c 'import sys; sys.exit(4)'"
exit_statuses = {{ "4" = "gate-failed" }}
[[steps]]
id = "register"
title = "register"
needs = ["eval"]
run = "{PY} -c 'open(\\"{{{{job_dir}}}}/log.txt\\",\\"a\\").write(\\"register\\\\n\\")'"
'''
    marker.write_text("x")
    p = tmp_path / "outcomes.formula.toml"
    p.write_text(text)
    return p


def test_declared_exit_codes_pause_or_set_the_ending(tmp_path):
    """exit 3 = stopped: the run pauses, the step stays unfinished, a rerun resumes it; exit 4 =
    gate-failed: the run goes on and ends gate-failed, also when a rerun finds every step done."""
    from gt_ext.orchestrate.runner import EXIT_STOPPED

    f = load_formula(_outcome_formula(tmp_path))
    assert f.steps[0].outcome(3) == "stopped" and f.steps[0].outcome(1) is None
    job, rec = tmp_path / "job", Recorder()
    with pytest.raises(GtExtError, match="step train stopped \\(exit code 3\\); rerun to resume it") as e:
        run_formula(f, {}, job, tracker=rec)
    assert e.value.exit_code == EXIT_STOPPED and rec.events[-1][0] == "stopped"
    assert json.loads((job / "formula-state.json").read_text())["completed"] == []
    (tmp_path / "limit").unlink()
    rec = Recorder()
    res = run_formula(f, {}, job, tracker=rec)
    assert res.ran == ["train", "eval", "register"] and res.status == "gate-failed"
    assert (job / "log.txt").read_text() == "train\ntrain\nregister\n"
    assert rec.events[-1] == ("done", "gate-failed")
    again = run_formula(f, {}, job, tracker=Recorder())
    assert again.ran == [] and again.status == "gate-failed"


def test_bad_exit_statuses_are_refused(tmp_path):
    p = tmp_path / "bad.formula.toml"
    p.write_text('formula = "bad"\n[[steps]]\nid = "a"\ntitle = "a"\nrun = "true"\nexit_statuses = { "3" = "done" }\n')
    with pytest.raises(GtExtError, match="exit status 'done' is not one of stopped, gate-failed"):
        load_formula(p)
    p.write_text('formula = "bad"\n[[steps]]\nid = "a"\ntitle = "a"\nrun = "true"\nexit_statuses = { "0" = "stopped" }\n')
    with pytest.raises(GtExtError, match="is not a non-zero exit code"):
        load_formula(p)
