"""Runs side by side: what differs in their configs, their figures, their evals, their losses.

    rows = summary_rows(runs)          # [(label, [value per run])] for a table
    diff = config_diff(runs)           # {"optim.lr": [2e-4, 1e-3, ...]}: only keys that differ
    plot_losses(runs, "cmp.png")       # one PNG: one train-loss curve per run, axes, legend
    sparkline([3.2, 2.1, 0.9])         # "█▅▁" for a terminal
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from gt_ext.atomic import atomic_write_bytes
from gt_ext.runs.discover import RunInfo

SPARKS = "▁▂▃▄▅▆▇█"
_MISSING = object()


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a.b": value}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_diff(runs: list[RunInfo]) -> dict[str, list[Any]]:
    """Config keys whose values are not the same in every run (a key missing in a run is None)."""
    flat = [flatten(r.config) for r in runs]
    keys = sorted(set().union(*flat)) if flat else []
    out = {}
    for k in keys:
        vals = [f.get(k, _MISSING) for f in flat]
        if any(v != vals[0] for v in vals[1:]):
            out[k] = [None if v is _MISSING else v for v in vals]
    return out


def sparkline(values: list[float], width: int = 32) -> str:
    """Values as block characters, resampled to at most `width` (empty string for no values)."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return ""
    if len(vals) > width:  # mean over equal buckets
        step = len(vals) / width
        vals = [sum(b) / len(b) for b in (vals[int(i * step):max(int((i + 1) * step), int(i * step) + 1)]
                                          for i in range(width))]
    lo, hi = min(vals), max(vals)
    span = hi - lo
    return "".join(SPARKS[0 if span == 0 else min(len(SPARKS) - 1, int((v - lo) / span * len(SPARKS)))] for v in vals)


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def suites(runs: list[RunInfo]) -> list[str]:
    """Eval suites any of the runs has a result for (registry first)."""
    names = sorted({s for r in runs for s in r.evals})
    return sorted(names, key=lambda s: s != "registry")


def summary_rows(runs: list[RunInfo]) -> list[tuple[str, list[str]]]:
    """The comparison table, row by row (label, one cell per run)."""
    def row(label: str, fn) -> tuple[str, list[str]]:  # noqa: ANN001
        return label, [fn(r) for r in runs]

    rows = [
        row("kind", lambda r: r.kind),
        row("role / task", lambda r: f"{r.role or '?'}" + (f" / {r.task}" if r.task else "")),
        row("mode", lambda r: r.mode),
        row("status", lambda r: r.status or "?"),
        row("base model", lambda r: r.base_model or "?"),
        row("parent", lambda r: r.parent or "-"),
        row("corpus", lambda r: f"{(r.corpus_hash or '-')[:12]} ({r.examples} ex, {r.dpo_pairs} pairs)"),
        row("steps", lambda r: str(r.steps) if r.steps is not None else "-"),
        row("wall / CPU s", lambda r: f"{_num(r.wall_s, '.0f')} / {_num(r.cpu_s, '.0f')}"),
        row("tokens/s", lambda r: _num(r.tokens_per_s, '.0f')),
        row("val loss", lambda r: f"{_num(r.val_loss_start, '.4f')} -> {_num(r.val_loss_end, '.4f')}"),
        row("train loss", lambda r: sparkline([v for _, v in r.train_loss], 24) or "-"),
    ]
    for key, vals in config_diff(runs).items():
        rows.append((f"config {key}", ["-" if v is None else str(v) for v in vals]))
    for s in suites(runs):
        cats = sorted({c for r in runs for c in (r.evals.get(s) or {}).get("categories", {})})
        for c in cats:
            rows.append((f"eval {s} {c}", [_num(((r.evals.get(s) or {}).get("categories") or {}).get(c), ".1f")
                                            for r in runs]))
        rows.append((f"eval {s} composite", [_num((r.evals.get(s) or {}).get("composite"), ".1f") for r in runs]))
        rows.append((f"gate ({s})", [{True: "pass", False: "fail"}.get((r.evals.get(s) or {}).get("deployable"), "-")
                                     for r in runs]))
    rows.append(("registry", [r.registered or "-" for r in runs]))
    return rows


def plot_losses(runs: list[RunInfo], path: str | Path, title: str | None = None) -> Path:
    """One PNG: each run's train loss per step as one line (its val loss as dots of the same colour),
    axes labelled, a legend naming the runs. Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in runs:
        if r.train_loss:
            (line,) = ax.plot(*zip(*r.train_loss, strict=True), lw=1.4, label=r.id)
            color = line.get_color()
        else:
            color = None
        if r.val_loss:
            ax.plot(*zip(*r.val_loss, strict=True), "o", ms=4, color=color,
                    label=None if r.train_loss else f"{r.id} (val)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (lines: train, dots: validation)")
    ax.set_title(title or f"loss of {len(runs)} runs")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path
