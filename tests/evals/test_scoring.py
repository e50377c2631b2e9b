"""Category shares, weighted composite, pass^k and the gate."""

from __future__ import annotations

import pytest

from gt_ext.errors import ConfigError
from gt_ext.evals import scoring
from gt_ext.evals.scoring import Sample, TaskResult


def _task(tid, cat, *passes, skipped=False):
    return TaskResult(tid, cat, [Sample(p, 1.0 if p else 0.0, "", skipped=skipped) for p in passes])


def test_categories_and_weighted_composite():
    tasks = [_task("a", "patrol", True), _task("b", "patrol", False), _task("c", "planning", True),
             _task("d", "planning", True), _task("e", "patrol", True, skipped=True)]
    cats = scoring.categories(tasks)
    assert cats == {"patrol": {"passed": 1, "total": 2, "score": 50.0},
                    "planning": {"passed": 2, "total": 2, "score": 100.0}}
    # patrol weighs 3, planning 1: (3*50 + 1*100) / 4
    assert scoring.composite(cats, {"patrol": 3, "planning": 1}) == 62.5
    assert scoring.composite(cats, {}) == 75.0  # unknown categories weigh 1


def test_pass_k_counts_all_and_any():
    tasks = [_task("a", "p", True, True, True), _task("b", "p", True, False, True), _task("c", "p", False, False, False)]
    pk = scoring.pass_k(tasks, 3)
    assert pk["pass^k"] == pytest.approx(100 / 3, abs=0.01)
    assert pk["pass@k"] == pytest.approx(200 / 3, abs=0.01)
    assert pk["pass@1"] == pytest.approx(100 * (1 + 2 / 3) / 3, abs=0.01)
    assert [t.passed for t in tasks] == [True, True, False]  # majority of samples


def test_gate_reasons():
    cats = {"patrol": {"passed": 9, "total": 10, "score": 90.0}, "planning": {"passed": 1, "total": 4, "score": 25.0}}
    th = {"composite": 70, "min_category": 40, "pass_k": 60}
    g = scoring.gate(72.0, cats, {"k": 3, "pass^k": 50.0}, th)
    assert not g["deployable"]
    assert any("planning 25.0 < minimum 40.0" in r for r in g["reasons"])
    assert any("pass^3 50.0 < threshold 60.0" in r for r in g["reasons"])
    ok = scoring.gate(90.0, {"patrol": cats["patrol"]}, {"k": 1, "pass^k": 10.0}, th)
    assert ok["deployable"]  # pass^k only gates when k > 1


def test_thresholds_per_role_from_config():
    cfg = scoring.load_config()
    assert scoring.thresholds_for(cfg, "polecat")["composite"] > scoring.thresholds_for(cfg, "deacon")["composite"]
    assert scoring.thresholds_for(cfg, None) == cfg["thresholds"]["default"]


def test_config_override_and_errors(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("weights: {patrol: 10}\nthresholds: {witness: {composite: 5}}\n")
    cfg = scoring.load_config(p)
    assert cfg["weights"]["patrol"] == 10 and cfg["weights"]["planning"] == 1
    assert scoring.thresholds_for(cfg, "witness")["composite"] == 5
    p.write_text("weights: {patrol: -1}\n")
    with pytest.raises(ConfigError, match="weight of 'patrol'"):
        scoring.load_config(p)
    p.write_text("weights: [1]\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        scoring.load_config(p)
    with pytest.raises(ConfigError, match="not found"):
        scoring.load_config(tmp_path / "nope.yaml")
