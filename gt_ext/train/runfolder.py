"""The run folder every trainer writes (docs/CONTRACTS.md): run.json, metrics.jsonl and loss.png.

    RUN_DIR/run.json          `run_record(...)`, written by `write_run_json` (atomic)
    RUN_DIR/metrics.jsonl     `MetricsLog`: one JSON line a step ({"step", "loss", "lr", ...}) and
                              validation points ({"step", "val_loss"})
    RUN_DIR/loss.png          `plot_losses(rows, path)`
    RUN_DIR/adapter/          the final adapter; RUN_DIR/checkpoints/ (`gt_ext.train.checkpoint`)

`gt-ext train`, a swarm peer and the pipeline client all use these, so their folders are the same
to export, the registry and `--resume`.

`parent` in run.json names the role adapter a task adapter was trained on top of: the registry
`name:ver` when it came from the registry, else the folder of an unregistered role adapter.
`gt_ext.models.refs` turns either back into adapter folders.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from gt_ext.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from gt_ext.errors import GtExtError

log = logging.getLogger(__name__)

RUN_JSON = "run.json"
METRICS = "metrics.jsonl"
PLOT = "loss.png"
ADAPTER = "adapter"
STATUSES = ("running", "done", "stopped", "failed", "degraded")  # stopped: a time limit, resumable


def run_record(*, role: str, task: str | None, config: dict[str, Any], corpus: str | os.PathLike,
               corpus_hash: str | None, examples: int, dpo_pairs: int, status: str,
               metrics: dict[str, Any], parent: str | None, lora: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The run.json of the contract; `extra` adds trainer-specific keys (e.g. `swarm`, `truncated`)."""
    if status not in STATUSES:
        raise ValueError(f"run status {status!r} is not one of {STATUSES}")
    return {
        "role": role,
        "task": task,
        "base_model": config["base_model"],
        "config": config,
        "corpus": str(corpus),
        "corpus_hash": corpus_hash,
        "examples": examples,
        "dpo_pairs": dpo_pairs,
        "lora": lora,
        "metrics": metrics,
        "status": status,
        "parent": parent,
        **extra,
        "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_run_json(run_dir: str | os.PathLike, record: dict[str, Any]) -> None:
    """Write RUN_DIR/run.json atomically."""
    atomic_write_json(Path(run_dir) / RUN_JSON, record)


def read_run_json(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """RUN_DIR/run.json, or None when there is none; a one-line error when it is unreadable."""
    p = Path(run_dir) / RUN_JSON
    if not p.is_file():
        return None
    try:
        rec = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GtExtError(f"{p}: unreadable ({e.__class__.__name__})") from None
    if not isinstance(rec, dict):
        raise GtExtError(f"{p}: expected a JSON object")
    return rec


# Settings a resumed run may change: how long it goes on and how often it reports, not what it
# learns from or how. A longer max_steps stretches the cosine schedule from the current step on.
RESUME_CHANGEABLE = ("max_steps", "max_time_s", "max_cpu_s", "eval_every", "checkpoint_every", "keep_checkpoints")


def check_new_or_resumable(run_dir: str | os.PathLike, config: dict[str, Any], resume: bool) -> None:
    """Refuse to overwrite a run without `resume`, and to resume one with another config (only the
    RESUME_CHANGEABLE keys may differ; max_steps not below the newest checkpoint's step)."""
    prev = read_run_json(run_dir)
    if prev is None:
        return
    if not resume:
        raise GtExtError(f"run folder {run_dir} already has a run; pass --resume to continue it or choose another --out")
    old = prev.get("config") or {}
    differ = sorted(k for k in set(old) | set(config) if k not in RESUME_CHANGEABLE and old.get(k) != config.get(k))
    if differ:
        raise GtExtError(f"--resume: {', '.join(differ)} differ from {Path(run_dir) / RUN_JSON}; a resumed run may "
                         f"change only {', '.join(RESUME_CHANGEABLE)}")
    from gt_ext.train import checkpoint

    ck = checkpoint.latest(run_dir)
    done = int(ck.name.split("-", 1)[1]) if ck is not None else 0
    if config.get("max_steps") is not None and config["max_steps"] < done:
        raise GtExtError(f"--resume: max_steps={config['max_steps']} is below the {done} steps {run_dir} has done")


class MetricsLog:
    """RUN_DIR/metrics.jsonl: appended one line a step; cut back to a checkpoint on resume."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / METRICS

    def reset(self) -> None:
        """Start an empty log (a fresh run)."""
        atomic_write_text(self.path, "")

    def append(self, rec: dict[str, Any]) -> None:
        """Add one record (a step, or a validation point)."""
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")

    def read(self) -> list[dict[str, Any]]:
        """Every record, in order ([] when there is no log yet)."""
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").split("\n") if line.strip()]

    def keep_until(self, step: int) -> list[dict[str, Any]]:
        """Forget records after `step` (those steps run again after a resume); return the kept ones."""
        kept = [r for r in self.read() if r.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        return kept


def plot_losses(rows: list[dict[str, Any]], path: str | os.PathLike) -> None:
    """Train loss per step and validation loss points, as a PNG (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tr = [(r["step"], r["loss"]) for r in rows if r.get("loss") is not None]
    va = [(r["step"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    if tr:
        ax.plot(*zip(*tr, strict=True), label="train", lw=1)
    if va:
        ax.plot(*zip(*va, strict=True), "o-", label="val")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
