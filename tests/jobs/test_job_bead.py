"""Training jobs as real beads: custom statuses, status history, dependency on the corpus bead."""

from __future__ import annotations

import sys

import pytest

from gt_ext.errors import GtExtError
from gt_ext.gastown.bd import Bd
from gt_ext.jobs.bead import open_job
from gt_ext.jobs.statuses import JOB_STATUSES, merge_custom_statuses
from gt_ext.orchestrate.formula import load_formula
from gt_ext.orchestrate.runner import run_formula


def test_merge_custom_statuses_keeps_town_statuses():
    merged = merge_custom_statuses("review:wip,training:wip")
    parts = merged.split(",")
    assert parts[:2] == ["review:wip", "training:wip"]
    assert {p.split(":")[0] for p in parts} == {"review", *JOB_STATUSES}
    assert merge_custom_statuses(merged) == merged  # idempotent


FORMULA = f'''
formula = "mini"
[vars.role]
required = true
[[steps]]
id = "prep"
title = "prep"
job_status = "corpus-validating"
run = "{sys.executable} -c pass"
[[steps]]
id = "train"
title = "train"
needs = ["prep"]
job_status = "training"
run = "{sys.executable} -c pass"
[[steps]]
id = "eval"
title = "eval"
needs = ["train"]
job_status = "evaluating"
run = "{sys.executable} -c 'import sys; sys.exit(4)'"
'''


@pytest.mark.integration
def test_job_bead_moves_through_statuses_with_real_bd(beads_dir, tmp_path):
    path = tmp_path / "mini.formula.toml"
    path.write_text(FORMULA)
    f = load_formula(path)
    bd = Bd(beads_dir)
    job_dir = tmp_path / "job"
    tracker = open_job(f, {"role": "witness"}, job_dir, bd=bd)
    with pytest.raises(GtExtError, match="step eval failed with exit code 4"):
        run_formula(f, {"role": "witness"}, job_dir, tracker=tracker)

    issue = bd.show(tracker.bead_id)
    assert issue.status == "failed"
    history = [h["status"] for h in issue.metadata["status_history"]]
    assert history == ["corpus-validating", "ready", "training", "evaluating", "failed"]
    assert issue.metadata["failure"] == "step eval failed with exit code 4"
    assert issue.metadata["vars"]["role"] == "witness"
    deps = issue.model_extra.get("dependencies") or []
    assert [d["id"] for d in deps] == [issue.metadata["corpus_bead"]]

    # A rerun reuses the same bead (job.json in the job folder).
    again = open_job(f, {"role": "witness"}, job_dir, bd=bd)
    assert again.bead_id == tracker.bead_id
    custom = bd.config_get("status.custom")
    value = custom.get("value") if isinstance(custom, dict) else custom
    assert "corpus-validating:active" in value and "failed:frozen" in value


OUTCOMES = f'''
formula = "mini-outcomes"
[vars.role]
required = true
[vars.limit]
default = "1"
[[steps]]
id = "train"
title = "train"
job_status = "training"
run = "{sys.executable} -c 'import sys; sys.exit(3 if {{{{limit}}}} else 0)'"
exit_statuses = {{ "3" = "stopped" }}
[[steps]]
id = "eval"
title = "eval"
needs = ["train"]
job_status = "evaluating"
run = "{sys.executable} -c 'import sys; sys.exit(4)'"
exit_statuses = {{ "4" = "gate-failed" }}
'''


@pytest.mark.integration
def test_time_limit_stops_and_failed_gate_ends_the_job_in_their_own_statuses(beads_dir, tmp_path):
    path = tmp_path / "mini-outcomes.formula.toml"
    path.write_text(OUTCOMES)
    f = load_formula(path)
    bd = Bd(beads_dir)
    tracker = open_job(f, {"role": "boot"}, tmp_path / "stop", bd=bd)
    with pytest.raises(GtExtError, match="stopped"):
        run_formula(f, {"role": "boot"}, tmp_path / "stop", tracker=tracker)
    assert bd.show(tracker.bead_id).status == "stopped"  # resumable, not done and not failed

    tracker = open_job(f, {"role": "boot", "limit": "0"}, tmp_path / "gate", bd=bd)
    res = run_formula(f, {"role": "boot", "limit": "0"}, tmp_path / "gate", tracker=tracker)
    issue = bd.show(tracker.bead_id)
    assert res.status == issue.status == "gate-failed"
    assert [h["status"] for h in issue.metadata["status_history"]][-2:] == ["evaluating", "gate-failed"]
    corpus = bd.show(issue.metadata["corpus_bead"])
    assert corpus.status == "closed"


@pytest.mark.integration
def test_swarm_status_reports_reach_the_job_bead_in_order(beads_dir, monkeypatch):
    """What a swarm peer run as a job step reports (gt_ext.swarm.peer uses StatusReporter): each
    status once, in order, through a background thread; a lost peer's `degraded` is not undone by
    another peer's later `syncing`; outside a job nothing happens."""
    from gt_ext.jobs.bead import StatusReporter, ensure_statuses

    monkeypatch.delenv("GT_EXT_JOB_BEAD", raising=False)
    assert not StatusReporter().enabled
    bd = Bd(beads_dir)
    ensure_statuses(bd)
    bead = bd.create("swarm job", metadata={"status_history": []})
    monkeypatch.setenv("GT_EXT_JOB_BEAD", bead.id)
    monkeypatch.setenv("GT_EXT_JOB_BEADS_DIR", str(beads_dir))
    rep = StatusReporter()
    for status in ("syncing", "syncing", "degraded"):
        rep.report(status, f"peer says {status}")
    rep.close()
    late = StatusReporter()  # another peer, still thinking the swarm is healthy
    late.report("syncing", "late peer averaging")
    late.close()
    issue = bd.show(bead.id)
    assert [h["status"] for h in issue.metadata["status_history"]] == ["syncing", "degraded"]
    assert issue.status == "degraded"


# --- issue #20: `job show|resume` on an unknown id gave bd's text and exit 1; any bead showed as a job
@pytest.mark.integration
def test_job_commands_name_the_id_and_refuse_a_bead_that_is_no_job(beads_dir, tmp_path, monkeypatch, capsys):
    from gt_ext.cli import main

    monkeypatch.setenv("GT_EXT_JOB_BEADS_DIR", str(beads_dir))
    bd = Bd(beads_dir)
    plain = bd.create("Fix the login page")
    path = tmp_path / "mini.formula.toml"
    path.write_text(FORMULA)
    job = open_job(load_formula(path), {"role": "witness"}, tmp_path / "job", bd=bd)
    capsys.readouterr()
    for argv in (["job", "show", "zz-404"], ["job", "resume", "zz-404"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "no training job 'zz-404'" in err, err
    for argv in (["job", "show", plain.id], ["job", "resume", plain.id], ["job", "show", plain.id, "--json"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{plain.id} is a bead" in err and "not a training job" in err, err
    assert main(["job", "show", job.bead_id]) == 0
    assert job.bead_id in capsys.readouterr().out
