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

    def done(self):
        self.events.append(("done",))


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
