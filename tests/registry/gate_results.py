"""Eval results as `gt-ext eval run` writes them, for the registry's gate tests."""

from __future__ import annotations

from pathlib import Path

GATE_SUITE = """prompts: ["{{ q }}"]
tests:
  - {description: one, vars: {q: a}, assert: [{type: contains, value: a}]}
"""


def eval_result(suite_dir: Path | str, role: str, deployable: bool = True, composite: float = 81.5,
                limit: int | None = None, model_files: dict | None = None, suite: str = "gate") -> dict:
    """An EvalResult dict as `gt-ext eval run` writes it, for the suite in `suite_dir`."""
    from gt_ext.evals import suite as suite_mod

    return {"suite": suite, "role": role, "k": 1, "composite": composite,
            "categories": {"patrol": {"passed": 4, "total": 5, "score": composite}},
            "gate": {"deployable": deployable, "threshold": 60, "reasons": []},
            "run": {"producer": "gt-ext eval run", "suite_spec": str(suite_dir),
                    "suite_hash": suite_mod.suite_hash(suite_mod.resolve_suite_dir(suite_dir)),
                    "suite_tasks": 5, "run_tasks": limit or 5, "limit": limit, "split": None,
                    "full": limit is None, "model_files": model_files or {}}}
