"""Patrol scores that mean reading: the model next to the baselines a reader must beat, per step.

For a suite whose tests carry `step`, `expect`, `allowed_names` and `noop` vars (the patrol
suites, `suite.yaml: patrol_report: true`), next to the model's own verdicts:

- valid JSON: share of answers holding one parseable JSON object (the first balanced `{...}`);
- allowed action: share whose `action` is one of the names the prompt listed;
- best constant per step: for each step, the one action (by its id, whatever name the list
  gives it) that passes most of that step's tests, chosen with the answers in hand; it is scored
  on the action alone (target and preserve are not asked of it), so it is an
  upper bound for any constant answer;
- random allowed action: the expected pass rate of a uniformly random listed action (action only);
- always no-op: the step's do-nothing action (action only; steps without one never pass).

A step counts as learned only when the model beats the constant baseline there.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from typing import Any


def listed_names(task: Any) -> list[str]:
    """The action names a task's prompt lists, in its order (a patrol test's `allowed_names` var, `a|b|c`)."""
    v = getattr(getattr(task, "test", None), "vars", None) or {}
    return [a for a in str(v.get("allowed_names", "")).split("|") if a]


def first_object(text: str) -> dict[str, Any] | None:
    """The first balanced `{...}` of `text` parsed as JSON (what the suite's transform grades)."""
    i = text.find("{")
    if i < 0:
        return None
    depth, in_str, esc = 0, False, False
    for j in range(i, len(text)):
        c = text[j]
        if in_str:
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == '"':
                in_str = False
            continue
        if c == '"':
            in_str = True
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                try:
                    obj = json.loads(text[i:j + 1])
                except json.JSONDecodeError:
                    return None
                return obj if isinstance(obj, dict) else None
    return None


def report(tasks: list[Any], results: dict[str, Any]) -> dict[str, Any]:
    """Per-step and overall: model pass, valid JSON, allowed action, and the three baselines.

    `tasks` are suite tasks with `.test.vars`; `results` maps task id -> scoring.TaskResult."""
    steps: dict[str, dict[str, Any]] = defaultdict(lambda: {"n": 0, "model": 0, "json": 0, "allowed": 0,
                                                            "random": 0.0, "noop": 0, "expect": Counter()})
    for t in tasks:
        v = getattr(getattr(t, "test", None), "vars", None) or {}
        res = results.get(t.id)
        if "step" not in v or res is None or res.skipped or not res.samples:
            continue
        s = steps[v["step"]]
        allowed = [a.lower() for a in listed_names(t)]
        expect = str(v["expect"]).lower()
        expect_id = str(v.get("expect_id") or expect)
        s["n"] += 1
        s["model"] += int(res.passed)
        obj = first_object(res.samples[0].output)
        s["json"] += int(obj is not None)
        s["allowed"] += int(obj is not None and str(obj.get("action", "")).lower().strip() in allowed)
        s["random"] += (1.0 / len(allowed)) if expect in allowed and allowed else 0.0
        s["noop"] += int(bool(v.get("noop")) and str(v["noop"]).lower() == expect)
        # The constant answers one action of the step whatever it is called in the list (the
        # reworded family lists it under another name): count the expected actions by their id.
        s["expect"][expect_id] += 1
    out: dict[str, Any] = {"steps": {}}
    tot = Counter()
    for key, s in sorted(steps.items()):
        n = s["n"]
        const_name, const_pass = s["expect"].most_common(1)[0]
        row = {"n": n, "model": _pct(s["model"], n), "valid_json": _pct(s["json"], n),
               "allowed_action": _pct(s["allowed"], n), "best_constant": _pct(const_pass, n),
               "best_constant_action": const_name, "random_allowed": _pct(s["random"], n),
               "always_noop": _pct(s["noop"], n)}
        row["learned"] = row["model"] > row["best_constant"]
        out["steps"][key] = row
        for k, val in (("n", n), ("model", s["model"]), ("json", s["json"]), ("allowed", s["allowed"]),
                       ("const", const_pass), ("random", s["random"]), ("noop", s["noop"])):
            tot[k] += val
    n = tot["n"]
    out["overall"] = {"n": n, "model": _pct(tot["model"], n), "valid_json": _pct(tot["json"], n),
                      "allowed_action": _pct(tot["allowed"], n), "best_constant": _pct(tot["const"], n),
                      "random_allowed": _pct(tot["random"], n), "always_noop": _pct(tot["noop"], n),
                      "steps_learned": sum(r["learned"] for r in out["steps"].values()),
                      "steps": len(out["steps"])}
    out["overall"]["over_best_constant"] = round(out["overall"]["model"] - out["overall"]["best_constant"], 2)
    return out


def by_family(tasks: list[Any], results: dict[str, Any], families: set[str] | None = None) -> dict[str, Any]:
    """`report` over the tasks whose `family` var ends with one of `families` (e.g. {"@r"})."""
    keep = [t for t in tasks if not families or any(str((getattr(t, "test", None).vars or {}).get("family", "")).endswith(f)
                                                  for f in families)]
    return report(keep, results)


def _pct(x: float, n: int) -> float:
    return round(100.0 * x / n, 2) if n else 0.0
