"""Patrol scores next to their baselines (best constant per step, random allowed, always no-op)."""

from types import SimpleNamespace

from gt_ext.evals import patrol_report
from gt_ext.evals.scoring import Sample, TaskResult


def _task(i, step, expect, expect_id, allowed, noop, family="s@c"):
    v = {"step": step, "expect": expect, "expect_id": expect_id, "allowed_names": allowed, "noop": noop,
         "family": family}
    return SimpleNamespace(id=f"t{i}", test=SimpleNamespace(vars=v))


def _res(i, passed, out):
    return TaskResult(id=f"t{i}", category="c", samples=[Sample(passed, float(passed), out)])


def test_baselines_and_learned_steps():
    tasks = [_task(0, "w/a", "none", "none", "none|restart", "none"),
             _task(1, "w/a", "none", "none", "none|restart", "none"),
             _task(2, "w/a", "restart", "restart", "restart|none", "none"),
             _task(3, "w/a", "respawn", "restart", "skip|respawn", "skip", family="s@r"),
             _task(4, "w/b", "push", "push", "push|commit", "")]
    results = {"t0": _res(0, True, 'x {"action": "none"} y'), "t1": _res(1, True, '{"action": "none"}'),
               "t2": _res(2, True, '{"action": "restart"}'), "t3": _res(3, True, '{"action": "respawn"}'),
               "t4": _res(4, False, "no json here")}
    rep = patrol_report.report(tasks, results)
    a, b = rep["steps"]["w/a"], rep["steps"]["w/b"]
    # the constant counts the action by id across wordings: restart (2 of 4) ties none (2 of 4)
    assert a["best_constant"] == 50.0 and a["model"] == 100.0 and a["learned"]
    assert a["random_allowed"] == 50.0 and a["always_noop"] == 50.0 and a["valid_json"] == 100.0
    assert b["best_constant"] == 100.0 and not b["learned"] and b["always_noop"] == 0.0 and b["valid_json"] == 0.0
    o = rep["overall"]
    assert o["n"] == 5 and o["model"] == 80.0 and o["best_constant"] == 60.0 and o["over_best_constant"] == 20.0
    assert o["allowed_action"] == 80.0 and o["steps_learned"] == 1
    rw = patrol_report.by_family(tasks, results, {"@r"})["overall"]
    assert rw["n"] == 1 and rw["allowed_action"] == 100.0


def test_first_object_reads_past_prose_and_rejects_broken_json():
    assert patrol_report.first_object('ok: {"a": "}"} tail {"b": 1}') == {"a": "}"}
    assert patrol_report.first_object('{"a": ') is None and patrol_report.first_object("none") is None
