"""Per-session attempt outcome and bead spans from gt's event log."""

from gt_ext.corpus.collect import sessions_for_bead
from gt_ext.corpus.eventindex import EventIndex
from gt_ext.corpus.store import Store
from gt_ext.corpus.tags import attempt_outcome


def _ev(kind, actor, **payload):
    return {"ts": "2026-01-01T00:00:00Z", "source": "gt", "type": kind, "actor": actor, "payload": payload}


def test_attempt_outcome_reads_done_and_failed_deaths_only():
    done = _ev("done", "r/polecats/nux", bead="gt-1", branch="b")
    assert attempt_outcome([done], "gt-1") == "success"
    assert attempt_outcome([done], "gt-2") is None
    # gt logs a session_death after every `gt done` too: that one is a clean exit.
    clean = _ev("session_death", "r/polecats/nux", session="gt-r-nux", reason="self-clean: done means idle")
    assert attempt_outcome([clean], "gt-1") is None
    assert attempt_outcome([_ev("session_death", "x", reason="user shutdown")], "gt-1") is None
    crash = _ev("session_death", "r/polecats/nux", reason="crashed with exit code 42")
    assert attempt_outcome([crash], "gt-1") == "failure"
    assert attempt_outcome([crash, done], "gt-1") == "success"


def test_sessions_for_bead_takes_only_the_actor_sessions_on_that_bead(tmp_path):
    nux = "r/polecats/nux"
    log = [
        _ev("session_start", nux, session_id="s0", role="polecat"),
        _ev("done", nux, bead="gt-0"),                                  # previous bead
        _ev("sling", "mayor", bead="gt-1", target=nux),
        _ev("session_start", nux, session_id="s1", role="polecat"),
        _ev("session_death", nux, reason="crashed with exit code 1"),
        _ev("session_start", "mayor", session_id="m1", role="mayor"),
        _ev("session_start", nux, session_id="s2", role="polecat"),
        _ev("done", nux, bead="gt-1"),
        _ev("session_death", nux, reason="self-clean: done means idle"),
        _ev("session_start", nux, session_id="s3", role="polecat"),     # next bead
    ]
    import json

    (tmp_path / ".events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in log))
    with Store.open(tmp_path / "corpus") as st:
        index = EventIndex(st, tmp_path)
        assert index.sync() == len(log)
        got = {s["session"]: s["attempt"] for s in sessions_for_bead({"id": "gt-1", "assignee": nux}, index, tmp_path, tmp_path)}
    assert got == {"s1": "failure", "s2": "success"}
