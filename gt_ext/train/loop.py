"""The single-process training loop, nanoGPT style: one readable `Trainer.train()`.

    trainer = Trainer(cfg, model, tokenizer, train_items, val_items, run_dir)
    result = trainer.train(resume=False)        # -> TrainResult

Per optimizer step: `grad_accum` micro-batches, loss normalised over the whole step's assistant
tokens (SFT) or pairs (DPO) so accumulation is exact; global-norm clipping; AdamW over the adapter
parameters only; LambdaLR warmup + cosine. A NaN/inf loss or gradient skips the update (counted);
`max_nonfinite` in a row checkpoints and stops with status "failed". Checkpoints
(`gt_ext.train.checkpoint`: adapter, optimizer, scheduler, RNG states, data position) let
`train(resume=True)` continue from the newest one and reproduce the uninterrupted losses.

Writes into run_dir (`gt_ext.train.runfolder`): metrics.jsonl (one line a step), checkpoints/step-N/,
adapter/, loss.png.
"""

from __future__ import annotations

import logging
import math
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from gt_ext.errors import GtExtError
from gt_ext.train import checkpoint, losses
from gt_ext.train.config import TrainConfig
from gt_ext.train.data import BatchLoader, Item, batch_tokens, fixed_batches
from gt_ext.train.lora import save_adapter, trainable_parameters
from gt_ext.train.runfolder import ADAPTER, PLOT, MetricsLog, plot_losses

log = logging.getLogger(__name__)

StepCallback = Callable[[int, dict[str, Any]], None]


@dataclass
class TrainResult:
    """How a run ended."""

    status: str  # "done" | "stopped" (time limit, resumable) | "failed"
    steps: int
    val_loss_start: float | None
    val_loss_end: float | None
    tokens_per_s: float
    nonfinite_steps: int = 0
    peak_memory_mb: float = 0.0
    peak_memory_kind: str = ""
    message: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    """Multiplier of the base lr at optimizer step s: linear warmup, then cosine to min_lr_ratio."""
    warm, total, floor = cfg.optim.warmup_steps, cfg.max_steps, cfg.optim.min_lr_ratio

    def f(s: int) -> float:
        if s < warm:
            return (s + 1) / (warm + 1)
        progress = min(1.0, (s - warm) / max(1, total - warm))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def pad_id(tokenizer: Any) -> int:
    """The id batches are padded with: the tokenizer's pad token, else its EOS (padding never
    carries loss, so any id works; EOS keeps it a token the model knows)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


@torch.no_grad()
def validation_loss(model: Any, batches: list[dict[str, Any]], cfg: TrainConfig) -> float | None:
    """Token-weighted mean NLL (SFT) or pair-weighted DPO loss over fixed batches; None without any."""
    if not batches:
        return None
    was_training = model.training
    model.eval()
    # Accumulate on the model's device (float64): one host sync at the end, not one per batch.
    device = next(model.parameters()).device
    num, den = torch.zeros((), dtype=torch.float64, device=device), 0
    for b in batches:
        if cfg.mode == "sft":
            s, n = losses.sft_loss_sum(model, b)
            num, den = num + s.double(), den + n
        else:
            loss, _ = losses.dpo_batch_loss(model, b, cfg.dpo.beta)
            n = b["n_examples"] // 2
            num, den = num + loss.double() * n, den + n
    model.train(was_training)
    return float(num) / max(den, 1)


def nonfinite_stop_message(in_a_row: int, step: int) -> str:
    """Why a run stopped on non-finite losses (the same words for every trainer)."""
    return (f"stopped after {in_a_row} non-finite steps in a row at step {step} "
            f"(lower optim.lr or check the data); checkpoint saved")


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    """(peak MiB, what was measured): CUDA's peak allocated memory, or this process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_peak_rss"


class Trainer:
    """Single-process LoRA trainer over rendered items (see module docstring)."""

    def __init__(
        self,
        cfg: TrainConfig,
        model: Any,
        tokenizer: Any,
        train_items: list[Item],
        val_items: list[Item],
        run_dir: str | Path,
        progress: bool = True,
        callbacks: list[StepCallback] | None = None,
    ):
        self.cfg, self.model, self.tok = cfg, model, tokenizer
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.callbacks = list(callbacks or [])
        # Set (to the signal's name) by run_training's SIGTERM handler: the loop stops after the
        # step in flight, with a checkpoint, as `stopped`.
        self.stop_requested: str | None = None
        pad = pad_id(tokenizer)
        d = cfg.data
        self.loader = BatchLoader(train_items, d.batch_size, d.pack, d.pack_length, d.seed, pad)
        self.val_batches = fixed_batches(val_items, d.batch_size, d.pack, d.pack_length, pad) if val_items else []
        self.params = trainable_parameters(model)
        if not self.params:
            raise GtExtError("model has no trainable parameters (expected a LoRA adapter)")
        self.device = self.params[0].device
        o = cfg.optim
        # CUDA: the fused AdamW kernel (one launch for all adapter tensors); CPU: the default.
        fused = {"fused": True} if self.device.type == "cuda" else {}
        self.opt = torch.optim.AdamW(self.params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay,
                                     **fused)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(cfg))
        self.step = 0
        self.nonfinite_total = 0
        self.nonfinite_run = 0
        self.ref_cache: dict[int, torch.Tensor] | None = None
        self.train_items = train_items
        self.train_seconds = (0.0, 0.0)  # (wall, CPU) of the last train() call, evaluations included

    # -- paths --------------------------------------------------------------------------------------
    @property
    def ckpt_root(self) -> Path:
        return checkpoint.checkpoints_dir(self.run_dir)

    @property
    def metrics(self) -> MetricsLog:
        return MetricsLog(self.run_dir)

    # -- loss of one step ---------------------------------------------------------------------------
    def _ref_for(self, batch: dict[str, Any]) -> torch.Tensor | None:
        if self.ref_cache is None:
            return None
        return torch.cat([self.ref_cache[i] for i in batch["item_index"]])

    def precompute_reference(self) -> None:
        """DPO: reference log-probs of every training pair once (adapters disabled)."""
        pad = self.loader.pad_id
        cache: dict[int, torch.Tensor] = {}
        d = self.cfg.data
        for b in fixed_batches(self.train_items, d.batch_size, d.pack, d.pack_length, pad):
            ref = losses.reference_logps(self.model, b).cpu()
            for k, idx in enumerate(b["item_index"]):
                cache[idx] = ref[2 * k : 2 * k + 2]
        self.ref_cache = cache

    def _micro_losses(self, micro: list[dict[str, Any]]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward + backward over a step's micro-batches; returns (step loss, extra metrics) as
        device scalars: nothing here waits for the device (the step reads them once, at its end)."""
        extra: dict[str, torch.Tensor] = {}
        if self.cfg.mode == "sft":
            # Normalise by the step's total assistant tokens: the sum of micro-batch gradients is
            # then exactly the gradient of the mean over the step (no bias from uneven batches).
            # Counted on the host batches, so it costs no device sync.
            total = sum(int((b["targets"] != -100).sum()) for b in micro)
            value = torch.zeros((), device=self.device)
            for b in micro:
                s, _ = losses.sft_loss_sum(self.model, b)
                (s / total).backward()
                value += s.detach()
            return value / total, extra
        pairs = sum(b["n_examples"] // 2 for b in micro)
        value = torch.zeros((), device=self.device)
        for b in micro:
            loss, m = losses.dpo_batch_loss(self.model, b, self.cfg.dpo.beta, ref=self._ref_for(b))
            w = (b["n_examples"] // 2) / pairs
            (loss * w).backward()
            value += loss.detach() * w
            for k, v in m.items():
                extra[k] = extra.get(k, 0.0) + v * w
        return value, extra

    def evaluate(self) -> float | None:
        """Validation loss over the fixed validation batches (see `validation_loss`)."""
        return validation_loss(self.model, self.val_batches, self.cfg)

    # -- checkpoints (format: gt_ext.train.checkpoint) --------------------------------------------
    def save_checkpoint(self) -> Path:
        """Write checkpoints/step-N (atomic); keep the newest `keep_checkpoints`."""
        state = checkpoint.TrainerState(
            step=self.step, optimizer=self.opt.state_dict(), scheduler=self.sched.state_dict(),
            data=self.loader.state_dict(), nonfinite_total=self.nonfinite_total, nonfinite_run=self.nonfinite_run)
        return checkpoint.save(self.run_dir, self.model, state, self.cfg.keep_checkpoints)

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        return checkpoint.list_checkpoints(self.run_dir)

    def load_checkpoint(self, path: Path) -> None:
        """Restore adapter, optimizer, scheduler, RNG and data position from a checkpoint folder
        (also one a swarm peer wrote: its data order, seeded per peer, is kept)."""
        state = checkpoint.load(path, self.model)
        self.opt.load_state_dict(state.optimizer)
        if state.scheduler is not None:
            self.sched.load_state_dict(state.scheduler)
        self.loader.seed = int(state.data.get("seed", self.loader.seed))
        self.loader.load_state_dict(state.data)
        self.step = state.step
        self.nonfinite_total = state.nonfinite_total
        self.nonfinite_run = state.nonfinite_run

    # -- the loop -----------------------------------------------------------------------------------
    def train(self, resume: bool = False) -> TrainResult:
        """Run to `max_steps` (or `max_time_s`), checkpointing; `resume` continues the newest checkpoint."""
        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        history: list[dict[str, Any]] = []
        val_start: float | None = None
        if resume and self.checkpoints():
            ckpt = self.checkpoints()[-1]
            self.load_checkpoint(ckpt)
            # Forget metrics written after the checkpoint: those steps run again.
            history = self.metrics.keep_until(self.step)
            val_start = next((r["val_loss"] for r in history if r.get("step") == 0 and "val_loss" in r), None)
            log.info("resumed from %s", ckpt)
        else:
            if resume:
                log.warning("--resume: no checkpoint in %s, starting fresh", self.ckpt_root)
            torch.manual_seed(cfg.seed)
            random.seed(cfg.seed)
            self.metrics.reset()
            val_start = self.evaluate()
            rec = {"step": 0, "val_loss": val_start}
            self.metrics.append(rec)
            history.append(rec)
        if cfg.mode == "dpo" and cfg.dpo.precompute_ref and self.ref_cache is None:
            self.precompute_reference()

        self.model.train()
        started = time.perf_counter()
        cpu_started = time.process_time()
        tokens_seen = 0
        status, message = "done", ""
        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=not self.progress, desc="train", unit="step")
        try:
            while self.step < cfg.max_steps:
                t0 = time.perf_counter()
                micro = [self.loader.next_batch() for _ in range(cfg.optim.grad_accum)]
                ntok = sum(batch_tokens(b) for b in micro)
                loss_t, extra_t = self._micro_losses(micro)
                max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
                gnorm_t = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
                # The one host sync of the step: loss, gradient norm and extra metrics together.
                names = list(extra_t)
                values = torch.stack([loss_t.float(), gnorm_t.float().to(loss_t.device),
                                      *[torch.as_tensor(extra_t[k], device=loss_t.device).float() for k in names]])
                loss, gnorm, *rest = values.tolist()
                extra = dict(zip(names, rest, strict=True))
                lr = self.sched.get_last_lr()[0]
                finite = math.isfinite(loss) and math.isfinite(gnorm)
                if finite:
                    self.opt.step()
                    self.nonfinite_run = 0
                else:
                    self.nonfinite_total += 1
                    self.nonfinite_run += 1
                    log.warning("step %d: non-finite loss/gradient (loss=%s, grad_norm=%s), update skipped",
                                self.step + 1, loss, gnorm)
                self.opt.zero_grad(set_to_none=True)
                with warnings.catch_warnings():
                    # A skipped update leaves the optimizer unstepped; the schedule still advances.
                    warnings.simplefilter("ignore", UserWarning)
                    self.sched.step()
                self.step += 1
                dt = time.perf_counter() - t0
                tokens_seen += ntok
                rec: dict[str, Any] = {
                    "step": self.step,
                    "loss": loss if finite else None,
                    "lr": lr,
                    "grad_norm": gnorm if finite else None,
                    "tokens": ntok,
                    "tokens_per_s": ntok / dt,
                    "epoch": self.loader.epoch,
                }
                if not finite:
                    rec["skipped"] = True
                rec.update(extra)
                last = self.step == cfg.max_steps
                if (cfg.eval_every and self.step % cfg.eval_every == 0) or last:
                    rec["val_loss"] = self.evaluate()
                self.metrics.append(rec)
                history.append(rec)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{ntok / dt:.0f}")
                if self.nonfinite_run >= cfg.max_nonfinite:
                    status = "failed"
                    message = nonfinite_stop_message(self.nonfinite_run, self.step)
                    self.save_checkpoint()
                    break
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and not last:
                    self.save_checkpoint()
                for cb in self.callbacks:
                    cb(self.step, rec)
                over_wall = cfg.max_time_s is not None and time.perf_counter() - started > cfg.max_time_s
                over_cpu = cfg.max_cpu_s is not None and time.process_time() - cpu_started > cfg.max_cpu_s
                if self.stop_requested and not last:
                    # Asked to stop (SIGTERM: gt or tmux ending the session): quickly, with a
                    # checkpoint, as `stopped`; --resume continues.
                    status = "stopped"
                    message = (f"stopped by {self.stop_requested} at step {self.step} of {cfg.max_steps}; "
                               f"checkpoint saved, --resume continues")
                    log.info(message)
                    self.save_checkpoint()
                    break
                if (over_wall or over_cpu) and not last:
                    # Not done: the run stops with a checkpoint and resumes from it (--resume).
                    kind = "wall" if over_wall else "CPU"
                    status = "stopped"
                    message = (f"{kind} time limit reached at step {self.step} of {cfg.max_steps}; "
                               f"checkpoint saved, --resume continues")
                    log.info(message)
                    rec_eval = self.evaluate()
                    history.append({"step": self.step, "val_loss": rec_eval})
                    self.metrics.append({"step": self.step, "val_loss": rec_eval, "time_limit": True})
                    self.save_checkpoint()
                    break
        finally:
            bar.close()
        if status == "done":
            self.save_checkpoint()
            save_adapter(self.model, self.run_dir / ADAPTER)
        elapsed = time.perf_counter() - started
        self.train_seconds = (elapsed, time.process_time() - cpu_started)
        peak_mb, peak_kind = peak_memory_mb(self.device)
        vals = [r["val_loss"] for r in history if r.get("val_loss") is not None]
        plot_losses(history, self.run_dir / PLOT)
        return TrainResult(
            status=status,
            steps=self.step,
            val_loss_start=val_start,
            val_loss_end=vals[-1] if vals else None,
            tokens_per_s=tokens_seen / elapsed if elapsed > 0 else 0.0,
            nonfinite_steps=self.nonfinite_total,
            message=message,
            history=history,
            peak_memory_mb=peak_mb,
            peak_memory_kind=peak_kind,
        )

