"""One training run end to end: config + corpus partition -> run folder (CONTRACTS.md layout).

    prepare(role, corpus, task, config_path, overrides) -> Prepared   # validates; no model loaded
    run_training(prepared, out, resume=False, progress=True) -> dict  # the final run.json

`gt-ext train` is a thin wrapper around these two; `--dry-run` stops after `prepare`.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gt_ext.corpus import shards
from gt_ext.errors import GtExtError
from gt_ext.models.refs import parent_ref
from gt_ext.roles import check_role, check_task
from gt_ext.train import runfolder
from gt_ext.train.config import TrainConfig, config_to_dict, load_config
from gt_ext.train.data import Item, RenderStats, load_items

log = logging.getLogger(__name__)

VAL_HOLDOUT = 0.1  # share of train held out when a partition has no val split


@dataclass
class Prepared:
    """A validated run: config, rendered items and their statistics."""

    role: str
    task: str | None
    corpus: Path
    corpus_hash: str | None
    cfg: TrainConfig
    tokenizer: Any
    train: list[Item]
    val: list[Item]
    train_stats: RenderStats
    val_stats: RenderStats
    val_from_train: bool = False
    parent: str | None = None  # run.json `parent`: the role adapter as name:ver or absolute folder

    def summary(self) -> dict[str, Any]:
        """What `--dry-run` prints: partition, counts, token totals, truncations."""
        kind = self.cfg.mode
        return {
            "role": self.role,
            "task": self.task,
            "mode": kind,
            "base_model": self.cfg.base_model,
            "corpus": str(self.corpus),
            "corpus_hash": self.corpus_hash,
            "train": {**self.train_stats.to_dict(), "items": len(self.train)},
            "val": {**self.val_stats.to_dict(), "items": len(self.val), "held_out_from_train": self.val_from_train},
            "max_length": self.cfg.data.max_length,
            "config": config_to_dict(self.cfg),
        }


def _partition_name(kind: str, role: str, task: str | None) -> str:
    return f"{kind}/{role}/{task or '*'}"


def prepare(
    role: str,
    corpus: str | Path,
    task: str | None = None,
    config_path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    cfg: TrainConfig | None = None,
) -> Prepared:
    """Validate role/task/config/corpus and render the partition; raise `GtExtError` on bad input.
    `cfg` (an already loaded config) replaces `config_path` + `overrides`."""
    from gt_ext.models import load_tokenizer

    check_role(role)
    if task is not None:
        check_task(task)
    cfg = cfg if cfg is not None else load_config(config_path, overrides)
    parent = parent_ref(cfg.role_adapter)  # a missing role adapter fails here, before any model loads
    corpus = Path(corpus)
    if not corpus.is_dir():
        raise GtExtError(f"corpus folder {corpus} not found (make one with `gt-ext corpus export --out DIR`)")
    corpus_hash = shards.corpus_hash(corpus)
    tok = load_tokenizer(cfg.base_model)
    kind, ml = cfg.mode, cfg.data.max_length
    part = _partition_name(kind, role, task)
    train, tstats = load_items(corpus, kind, role, task, "train", tok, ml, cfg.data.max_train_examples)
    if not train:
        why = "no shard files" if not tstats.files else f"{tstats.records} records, none with assistant tokens"
        raise GtExtError(f"empty partition {part} train in {corpus} ({why})")
    val, vstats = load_items(corpus, kind, role, task, "val", tok, ml, cfg.data.max_val_examples)
    held_out = False
    if not val:
        if len(train) < 2:
            raise GtExtError(f"partition {part} in {corpus}: no val examples and too few train examples to hold out")
        # Deterministic hold-out so the run still reports a validation loss.
        order = list(range(len(train)))
        random.Random(cfg.data.seed).shuffle(order)
        n = max(1, int(len(train) * VAL_HOLDOUT))
        keep = set(order[n:])
        val = [train[i] for i in order[:n]]
        train = [t for i, t in enumerate(train) if i in keep]
        held_out = True
        log.warning("%s: no val split; holding out %d train examples for validation", part, n)
    return Prepared(role, task, corpus, corpus_hash, cfg, tok, train, val, tstats, vstats, held_out, parent)


def run_json_for(p: Prepared, status: str, metrics: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """run.json of a prepared run (any trainer: `extra` adds e.g. the swarm's own keys)."""
    cfg = p.cfg
    return runfolder.run_record(
        role=p.role, task=p.task, config=config_to_dict(cfg), corpus=p.corpus, corpus_hash=p.corpus_hash,
        examples=len(p.train) if cfg.mode == "sft" else 0, dpo_pairs=len(p.train) if cfg.mode == "dpo" else 0,
        lora={"r": cfg.lora.r, "alpha": cfg.lora.alpha, "targets": list(cfg.lora.targets)},
        metrics=metrics, status=status, parent=p.parent, truncated=p.train_stats.truncated, **extra)


class _StopFlag:
    """What the SIGTERM handler sets: on the trainer when there is one, else remembered for it."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self._trainer: Any = None

    @property
    def trainer(self) -> Any:
        return self._trainer

    @trainer.setter
    def trainer(self, t: Any) -> None:
        self._trainer = t
        t.stop_requested = t.stop_requested or self.signal


@contextmanager
def stop_on_sigterm() -> Iterator[_StopFlag]:
    """SIGTERM (gt killing a session, `timeout`, a scheduler) stops the run after the step in flight,
    with a checkpoint and status `stopped`, instead of leaving run.json `running`. A second
    SIGTERM ends the process at once. Only in the main thread (signal handlers live there)."""
    flag = _StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def on_term(signum: int, _frame: Any) -> None:
        flag.signal = signal.Signals(signum).name
        if flag.trainer is not None:
            flag.trainer.stop_requested = flag.signal
        log.warning("%s: stopping after the current step (send it again to stop at once)", flag.signal)
        signal.signal(signum, previous)

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_training(p: Prepared, out: str | Path, resume: bool = False, progress: bool = True, callbacks=None,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train and write the run folder; returns the final run.json content. `extra`: more keys for
    run.json (e.g. the `convention_fingerprint` summary)."""
    from gt_ext.train.loop import Trainer
    from gt_ext.train.lora import load_base_for_training

    out = Path(out)
    runfolder.check_new_or_resumable(out, config_to_dict(p.cfg), resume)
    out.mkdir(parents=True, exist_ok=True)
    if extra is None and resume:  # a resumed run keeps what its first start recorded
        extra = {k: v for k, v in (runfolder.read_run_json(out) or {}).items() if k == "convention_fingerprint"}
    extra = extra or {}
    runfolder.write_run_json(out, run_json_for(p, "running", {}, **extra))
    with stop_on_sigterm() as stop:
        model, _ = load_base_for_training(p.cfg)
        trainer = Trainer(p.cfg, model, p.tokenizer, p.train, p.val, out, progress=progress, callbacks=callbacks)
        stop.trainer = trainer
        try:
            result = trainer.train(resume=resume)
        except BaseException:
            runfolder.write_run_json(out, run_json_for(p, "failed", {"steps": trainer.step}, **extra))
            raise
    metrics = {
        "val_loss_start": result.val_loss_start,
        "val_loss_end": result.val_loss_end,
        "steps": result.steps,
        "tokens_per_s": result.tokens_per_s,
        "nonfinite_steps": result.nonfinite_steps,
        "train_wall_s": trainer.train_seconds[0],
        "train_cpu_s": trainer.train_seconds[1],
        "peak_memory_mb": round(result.peak_memory_mb, 1),
        "peak_memory_kind": result.peak_memory_kind,
        "setup": getattr(model, "_gt_setup", {}),
    }
    if result.message:
        metrics["message"] = result.message
    final = run_json_for(p, result.status, metrics, **extra)
    runfolder.write_run_json(out, final)
    return final
