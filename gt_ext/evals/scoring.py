"""Turn per-sample task outcomes into category shares, a weighted composite, pass^k and a gate verdict.

Definitions (k samples per task):
- a task passes when at least half of its k samples pass (k = 1: its one sample);
- category score = 100 * share of its tasks that pass; composite = weighted mean of category scores
  (weights from the config; categories the suite lacks are left out);
- pass^k = 100 * share of tasks whose k samples ALL pass (reliability); pass@k = share with at
  least one passing sample;
- skipped tasks (unsupported assertions, missing tools) count in neither the passed nor the total.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gt_ext.errors import ConfigError

DEFAULT_CONFIG = Path(__file__).with_name("config.yaml")


@dataclass
class Sample:
    """One graded model answer."""

    passed: bool
    score: float  # 0..1
    output: str
    reason: str = ""
    skipped: bool = False
    meta: dict[str, Any] = field(default_factory=dict)  # latency_ms, cost, engine


@dataclass
class TaskResult:
    """All k samples of one task."""

    id: str
    category: str
    samples: list[Sample] = field(default_factory=list)
    scenario: str | None = None
    split: str = "dev"

    @property
    def skipped(self) -> bool:
        """A task is skipped when any of its samples could not be graded."""
        return any(s.skipped for s in self.samples)

    @property
    def passed(self) -> bool:
        """Majority of samples pass (k = 1: the sample passes)."""
        graded = [s for s in self.samples if not s.skipped]
        return bool(graded) and 2 * sum(s.passed for s in graded) >= len(graded)

    @property
    def score(self) -> float:
        """0-100: mean sample score."""
        graded = [s for s in self.samples if not s.skipped]
        return 100.0 * sum(s.score for s in graded) / len(graded) if graded else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The per-task entry of the EvalResult (first sample's output; all samples' verdicts; the
        calls' mean latency and total cost, as the grading engine measured them)."""
        lat = [s.meta["latency_ms"] for s in self.samples if s.meta.get("latency_ms") is not None]
        costs = [s.meta["cost"] for s in self.samples if s.meta.get("cost") is not None]
        return {
            "id": self.id,
            "category": self.category,
            "scenario": self.scenario,
            "split": self.split,
            "passed": self.passed,
            "skipped": self.skipped,
            "score": round(self.score, 2),
            "output": self.samples[0].output if self.samples else "",
            "reason": self.samples[0].reason if self.samples else "",
            "samples": [s.passed for s in self.samples],
            "latency_ms": round(sum(lat) / len(lat)) if lat else None,
            "cost": sum(costs) if costs else None,
            "engine": self.samples[0].meta.get("engine") if self.samples else None,
        }


def load_config(path: str | Path | None = None) -> dict[str, Any]:
    """The scoring config: the packaged `config.yaml`, with keys from `path` laid over it."""
    cfg = yaml.safe_load(DEFAULT_CONFIG.read_text())
    if path is None:
        return cfg
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: eval config not found")
    try:
        over = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: invalid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(over, dict):
        raise ConfigError(f"{p}: eval config must be a mapping")
    for key in ("weights", "thresholds", "sampling"):
        if key in over:
            if not isinstance(over[key], dict):
                raise ConfigError(f"{p}: `{key}` must be a mapping")
            cfg[key] = {**cfg.get(key, {}), **over[key]}
    for key in ("grader", "cost_per_token"):
        if key in over:
            cfg[key] = over[key]
    if not isinstance(cfg.get("cost_per_token", 0), int | float) or cfg.get("cost_per_token", 0) < 0:
        raise ConfigError(f"{p}: cost_per_token must be a number >= 0")
    for cat, w in cfg["weights"].items():
        if not isinstance(w, int | float) or w < 0:
            raise ConfigError(f"{p}: weight of {cat!r} must be a number >= 0, got {w!r}")
    return cfg


def thresholds_for(cfg: dict[str, Any], role: str | None) -> dict[str, float]:
    """Gate thresholds of `role` (the default ones when the role has none or is None)."""
    th = dict(cfg["thresholds"].get("default", {}))
    if role and role in cfg["thresholds"]:
        th.update(cfg["thresholds"][role])
    return th


def categories(tasks: list[TaskResult]) -> dict[str, dict[str, Any]]:
    """{category: {passed, total, score}} over graded (non-skipped) tasks."""
    out: dict[str, dict[str, Any]] = {}
    for t in tasks:
        if t.skipped:
            continue
        c = out.setdefault(t.category, {"passed": 0, "total": 0, "score": 0.0})
        c["total"] += 1
        c["passed"] += int(t.passed)
    for c in out.values():
        c["score"] = round(100.0 * c["passed"] / c["total"], 2)
    return dict(sorted(out.items()))


def composite(cats: dict[str, dict[str, Any]], weights: dict[str, float]) -> float:
    """Weighted mean of category scores; unknown categories weigh 1."""
    num = den = 0.0
    for name, c in cats.items():
        w = float(weights.get(name, 1.0))
        num += w * c["score"]
        den += w
    return round(num / den, 2) if den > 0 else 0.0


def split_scores(tasks: list[TaskResult], weights: dict[str, float]) -> dict[str, dict[str, Any]]:
    """{split: {composite, passed, total, categories}} for each split that has tasks (dev, heldout)."""
    out: dict[str, dict[str, Any]] = {}
    for name in sorted({t.split for t in tasks}):
        part = [t for t in tasks if t.split == name]
        cats = categories(part)
        graded = [t for t in part if not t.skipped]
        out[name] = {"composite": composite(cats, weights), "passed": sum(t.passed for t in graded),
                     "total": len(graded), "scenarios": len({t.scenario for t in part}), "categories": cats}
    return out


def pass_k(tasks: list[TaskResult], k: int) -> dict[str, Any]:
    """{k, pass^k, pass@k, pass@1} in percent over graded tasks."""
    graded = [t for t in tasks if not t.skipped]
    n = len(graded)
    if n == 0:
        return {"k": k, "pass^k": 0.0, "pass@k": 0.0, "pass@1": 0.0}
    all_pass = sum(all(s.passed for s in t.samples) for t in graded)
    any_pass = sum(any(s.passed for s in t.samples) for t in graded)
    mean1 = sum(sum(s.passed for s in t.samples) / len(t.samples) for t in graded)
    return {
        "k": k,
        "pass^k": round(100.0 * all_pass / n, 2),
        "pass@k": round(100.0 * any_pass / n, 2),
        "pass@1": round(100.0 * mean1 / n, 2),
    }


def gate(comp: float, cats: dict[str, dict[str, Any]], pk: dict[str, Any], th: dict[str, float]) -> dict[str, Any]:
    """The deployment verdict with the reasons for it (every failed condition, or why it passed)."""
    reasons: list[str] = []
    need = float(th.get("composite", 0))
    if not cats:
        reasons.append("no task could be graded")
    if comp < need:
        reasons.append(f"composite {comp:.1f} < threshold {need:.1f}")
    floor = th.get("min_category")
    if floor is not None:
        for name, c in cats.items():
            if c["score"] < float(floor):
                reasons.append(f"category {name} {c['score']:.1f} < minimum {float(floor):.1f}")
    if pk["k"] > 1 and th.get("pass_k") is not None and pk["pass^k"] < float(th["pass_k"]):
        reasons.append(f"pass^{pk['k']} {pk['pass^k']:.1f} < threshold {float(th['pass_k']):.1f}")
    deployable = not reasons
    if deployable:
        reasons.append(f"composite {comp:.1f} >= threshold {need:.1f}; all categories >= {floor}")
    return {"deployable": deployable, "threshold": need, "thresholds": th, "reasons": reasons}
