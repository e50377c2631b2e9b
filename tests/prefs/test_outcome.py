"""Failure modes measured on outcomes, and the auto-pick rule."""

from __future__ import annotations

import pytest

from gt_ext.corpus.format import render_tool_call
from gt_ext.errors import GtExtError
from gt_ext.prefs.outcome import (
    auto_pick,
    convention_failures,
    dependency_failures,
    ordered,
    state_failures,
    tool_commands,
)
from gt_ext.prefs.record import Comparison, Failure, Outcome


def outcome(label: str, **kw) -> Outcome:
    base = dict(label=label, model=f"m-{label}", model_ref=f"m-{label}:1", dolt_branch=f"prefs-x-{label}",
                git_branch=f"prefs/x/{label}", worktree="/tmp/w", head_branch=f"prefs/x/{label}", exit_code=0)
    return Outcome(**{**base, **kw})


def comparison(a: Outcome, b: Outcome) -> Comparison:
    return Comparison(id="dm-1-1", bead="dm-1", rig="demo", role="polecat", models=[a.model, b.model],
                      status="pending", outcomes={"a": a, "b": b})


def chat(*commands: str) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "do it"}]
    for c in commands:
        msgs += [{"role": "assistant", "content": render_tool_call("Bash", {"command": c})},
                 {"role": "tool", "content": "ok"}]
    return msgs


def test_state_failures_each_mode() -> None:
    assert [f.mode for f in state_failures(outcome("a"))] == []
    assert [f.mode for f in state_failures(outcome("a", timed_out=True, exit_code=-15, wall_s=30))] == ["timeout"]
    crash = state_failures(outcome("a", exit_code=2), "Traceback ...\nerror: model not found")
    assert [f.mode for f in crash] == ["crash"] and "model not found" in crash[0].detail
    assert [f.mode for f in state_failures(outcome("a"), "node0> x\n[error: prompt too long]\n")] == ["crash"]
    assert [f.mode for f in state_failures(outcome("a", head_branch="main"))] == ["wrong-branch"]
    assert [f.mode for f in state_failures(outcome("a", stray_commits=["abc"]))] == ["wrong-branch"]
    broken = outcome("a", tests={"cmd": "pytest", "base_rc": 0, "rc": 1})
    assert [f.mode for f in state_failures(broken)] == ["tests-broken"]
    already = outcome("a", tests={"cmd": "pytest", "base_rc": 1, "rc": 1})  # failing before: not this agent's doing
    assert state_failures(already) == []
    closed = outcome("a", bead={"status": "closed", "close_reason": "Closed"})
    assert [f.mode for f in state_failures(closed)] == ["convention"]
    assert [f.mode for f in state_failures(outcome("a", dirty=["x.py"]))] == ["convention"]


def test_conventions_from_the_transcript() -> None:
    got = convention_failures(chat("git commit --no-verify -m wip", "pkill node0-inference"), "/tmp/w")
    assert [f.mode for f in got] == ["hooks-skipped", "convention", "convention"]
    assert "pkill" in got[1].detail and "refused by the guard" in got[2].detail
    assert convention_failures(chat("git commit -m 'dm-1: fix'", "bd close dm-1 --reason fixed"), "/tmp/w") == []
    assert tool_commands(chat("ls", "bd ready")) == ["ls", "bd ready"]


def test_dependency_direction() -> None:
    issues = [{"id": "dm-1", "status": "closed"}, {"id": "dm-2", "status": "open"}, {"id": "dm-3", "status": "open"}]
    reversed_edge = [{"issue_id": "dm-1", "depends_on_id": "dm-2", "type": "blocks"}]
    got = dependency_failures("dm-1", issues, reversed_edge, reversed_edge)
    assert [f.mode for f in got] == ["dependency-direction"] and "wrong way" in got[0].detail
    right_way = [{"issue_id": "dm-2", "depends_on_id": "dm-1", "type": "blocks"}]
    assert dependency_failures("dm-1", issues, right_way, right_way) == []
    related = [{"issue_id": "dm-1", "depends_on_id": "dm-2", "type": "related"}]  # not blocking
    assert dependency_failures("dm-1", issues, related, related) == []
    cycle_old = [{"issue_id": "dm-2", "depends_on_id": "dm-3", "type": "blocks"}]
    cycle_new = [{"issue_id": "dm-3", "depends_on_id": "dm-2", "type": "blocks"}]
    got = dependency_failures("dm-1", issues, cycle_old + cycle_new, cycle_new)
    assert "cycle" in got[0].detail


def test_auto_pick_orders_by_failures_then_progress() -> None:
    clean, skipped = outcome("a"), outcome("b", failures=[Failure(mode="hooks-skipped")])
    p = auto_pick(comparison(clean, skipped))
    assert (p.winner, p.loser, p.rule) == ("a", "b", "fewer-failure-modes") and "hooks-skipped" in p.why
    crash = outcome("a", failures=[Failure(mode="crash")])
    conv = outcome("b", failures=[Failure(mode="convention")])
    p = auto_pick(comparison(crash, conv))
    assert (p.winner, p.rule) == ("b", "less-severe-failures")
    done = outcome("b", bead={"status": "closed", "close_reason": "fixed"})
    p = auto_pick(comparison(outcome("a"), done))
    assert (p.winner, p.rule) == ("b", "more-progress") and "closed the bead" in p.why


def test_auto_pick_undecided_is_an_error() -> None:
    with pytest.raises(GtExtError, match="undecided.*--winner m-a"):
        auto_pick(comparison(outcome("a"), outcome("b")))


def test_ordered_keeps_one_per_mode_most_severe_first() -> None:
    fs = [Failure(mode="convention", detail="1"), Failure(mode="crash"), Failure(mode="convention", detail="2")]
    assert [(f.mode, f.detail) for f in ordered(fs)] == [("crash", ""), ("convention", "1")]


def test_outcome_for_label_or_model() -> None:
    c = comparison(outcome("a"), outcome("b"))
    assert c.outcome_for("B").label == "b" and c.outcome_for("m-a").label == "a" and c.outcome_for("m-b:1").label == "b"
    with pytest.raises(GtExtError, match="no side 'zz'"):
        c.outcome_for("zz")
