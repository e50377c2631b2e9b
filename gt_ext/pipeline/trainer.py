"""The pipeline trainer: the project's data and losses at the tail, backward through node0 stages.

    prepared = gt_ext.train.run.prepare(role, corpus, task, config, overrides)
    final = run_pipeline_training(prepared, out_dir, PipelineSettings(run="witness", ...))

Per optimizer step (`max_steps` of them), as `gt-ext train` does it in one process:

1. take `optim.grad_accum` micro-batches from the same BatchLoader (same order for the same seed);
2. for each: forward through the stages (head -> ... -> tail returns log p(target) per token),
   compute the loss here (SFT: summed NLL over the step's assistant tokens; DPO: sigmoid loss with
   reference log-probs from a forward with LoRA off), and send d(loss)/d(log p) back through the
   stages; each stage accumulates its LoRA gradients;
3. wait until every stage has stepped: its replicas average their gradients, all stages clip by
   the global norm, AdamW + the warmup/cosine schedule update each stage's LoRA.

hivemind's averager divides accumulated gradients by the number of micro-batches; the gradient sent
back is scaled by `grad_accum` so the update is exactly the single-process one.

The run folder is the one `gt-ext train` writes (run.json, metrics.jsonl, loss.png, adapter/,
checkpoints/step-N/ with the gathered PEFT adapter and trainer.pt). The data position is a function
of the step, and the stages keep their own optimizer state (node0 checkpoint_dir), so `--resume`
continues at the step the stages are at. The job bead (GT_EXT_JOB_BEAD) goes `syncing` when stage
replicas average, `degraded` when a replica is lost.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gt_ext.errors import GtExtError
from gt_ext.pipeline.client import PipelineClient, StageUnreachable
from gt_ext.pipeline.gather import GatheredAdapter, gather_adapter
from gt_ext.pipeline.records import StageRecord, check_run, settings_fingerprint
from gt_ext.procgroup import stop_groups
from gt_ext.swarm.auth import SwarmKey
from gt_ext.train import checkpoint, losses, runfolder
from gt_ext.train.config import config_to_dict
from gt_ext.train.data import IGNORE, BatchLoader, batch_tokens, fixed_batches

log = logging.getLogger(__name__)


@dataclass
class PipelineSettings:
    """Where the stages are and how long to wait for them."""

    run: str = "pipeline"
    initial_peers: list[str] = field(default_factory=list)
    key: SwarmKey | None = None
    key_file: Path | None = None  # handed to local stages
    stages: int | None = None  # start this many local stage servers (when no --initial-peers)
    compression_rate: int | None = None
    subspace: Path | None = None
    node0: Path | None = None
    route_timeout: float = 240.0  # stages coming up
    step_timeout: float = 120.0  # all stages applying one step
    stop_after_steps: int | None = None  # end this session after N steps (the run resumes with --resume)
    stage_args: list[str] = field(default_factory=list)  # extra `gt-ext pipeline stage` options


# ---------------------------------------------------------------------------------------------------
# Local stage servers (`--stages N`)
# ---------------------------------------------------------------------------------------------------


class LocalStages:
    """N `gt-ext pipeline stage` processes on 127.0.0.1, each in its own process group, reaped on close."""

    def __init__(self, n: int, run: str, run_dir: Path, cfg_file: Path, key_file: Path | None,
                 bootstrap: list[str], s: PipelineSettings):
        self.procs: list[subprocess.Popen] = []
        self.logs = logs = run_dir / "stages"
        logs.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        if s.node0 is not None:
            env["NODE0_PATH"] = str(s.node0)
        # The stages share this machine's cores and take turns (one stage computes at a time).
        for k in range(n):
            argv = [sys.executable, "-m", "gt_ext.cli", "pipeline", "stage", "--run", run, "--layers", f"{k}/{n}",
                    "--config", str(cfg_file), "--checkpoint-dir", str(logs / "checkpoints")]
            argv += ["--swarm-key", str(key_file)] if key_file else ["--insecure-open-swarm"]
            for p in bootstrap:
                argv += ["--initial-peers", p]
            if s.compression_rate:
                argv += ["--compression-rate", str(s.compression_rate), "--subspace", str(s.subspace)]
            argv += s.stage_args
            out = open(logs / f"stage-{k}.log", "a")
            self.procs.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                               start_new_session=True))

    def check(self) -> None:
        """Fail if a local stage exited, with the error line of its log."""
        for k, p in enumerate(self.procs):
            if p.poll() is not None:
                raise GtExtError(f"local stage {k} exited with code {p.returncode}: {self._last_error(k)}")

    def _last_error(self, k: int) -> str:
        log_file = self.logs / f"stage-{k}.log"
        lines = log_file.read_text(errors="replace").splitlines() if log_file.is_file() else []
        errors = [line.strip() for line in lines if line.startswith("error:")]
        return errors[-1].removeprefix("error:").strip() if errors else f"see {log_file}"

    def close(self) -> None:
        stop_groups(self.procs, grace_s=20)


# ---------------------------------------------------------------------------------------------------
# Forward and backward through the stages
# ---------------------------------------------------------------------------------------------------


def stage_inputs(batch: dict[str, Any], x: torch.Tensor, on: torch.Tensor, tail: bool) -> list[torch.Tensor]:
    """The tensors a stage takes (node0_patches.experts): x, positions, example ids, LoRA on/off
    per row, and the targets at the tail."""
    args = [x, batch["position_ids"], batch["example_index"], on]
    if tail:
        args.append(batch["targets"])
    return args


class PipelineModel:
    """Forward/backward of whole batches through a route of stages."""

    def __init__(self, client: PipelineClient):
        self.client = client
        # Which replica of each span to use (index into its replicas, modulo): the trainer sets it
        # per step, so one replica holds all of a step's micro-batches (and runs each backward on
        # the graph its forward kept); None: round robin.
        self.prefer: int | None = None
        self.hop_bytes = 0  # bytes sent into stages after the head (one hop each), since reset
        self.hop_tokens = 0  # real tokens times hops, same period

    def forward(self, route: list[list[StageRecord]], batch: dict[str, Any], adapters: bool = True,
                keep: bool = False) -> tuple[torch.Tensor, list[list[torch.Tensor]]]:
        """log p(target) per token [B, T] from the tail; with `keep`, every stage's inputs too."""
        on = torch.full((batch["input_ids"].shape[0],), 1.0 if adapters else 0.0)
        x: torch.Tensor = batch["input_ids"]
        kept = []
        for i, replicas in enumerate(route):
            args = stage_inputs(batch, x, on, tail=i == len(route) - 1)
            if keep:
                kept.append(args)
            x = self.client.forward(replicas, args, prefer=self.prefer)[0]
            if i > 0:  # a hop: activations from the previous stage, with positions and example ids
                self.hop_bytes += self.client.last_request_bytes
                self.hop_tokens += batch_tokens(batch)
        return x, kept

    def backward(self, route: list[list[StageRecord]], kept: list[list[torch.Tensor]], grad: torch.Tensor) -> None:
        """Send d(loss)/d(log p) back through the stages (each accumulates its LoRA gradients)."""
        for replicas, args in zip(reversed(route), reversed(kept), strict=True):
            grads = self.client.backward(replicas, args, [grad], prefer=self.prefer)
            grad = torch.nan_to_num(grads[0], nan=0.0, posinf=0.0, neginf=0.0)


def sft_sum(logp: torch.Tensor, batch: dict[str, Any]) -> tuple[torch.Tensor, int]:
    """Summed NLL over assistant tokens and their count, from per-token log-probs."""
    sel = batch["targets"] != IGNORE
    return -logp[sel].sum(), int(sel.sum())


def sequence_logps(logp: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
    """Per-example summed log-probs [n_examples] from per-token log-probs (as losses.sequence_logps)."""
    sel = batch["targets"] != IGNORE
    return losses.per_example_sums(logp[sel], batch["example_index"][sel], batch["n_examples"])


# ---------------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------------


class PipelineTrainer:
    """One pipeline training run (see module docstring)."""

    def __init__(self, prepared: Any, run_dir: Path, client: PipelineClient, s: PipelineSettings,
                 progress: bool = True, on_status: Callable[[str, str], None] | None = None,
                 on_step: Callable[[int, dict[str, Any]], None] | None = None,
                 check_stages: Callable[[], None] | None = None):
        self.p, self.cfg, self.run_dir, self.client, self.s = prepared, prepared.cfg, Path(run_dir), client, s
        # Raises when a stage this trainer started has exited (checked while waiting on stages).
        self.check_stages = check_stages or (lambda: None)
        self.model = PipelineModel(client)
        self.progress = progress
        self.on_status = on_status or (lambda status, why: None)
        self.on_step = on_step or (lambda step, rec: None)
        tok = prepared.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        d = self.cfg.data
        self.loader = BatchLoader(prepared.train, d.batch_size, d.pack, d.pack_length, d.seed, pad)
        self.val_batches = fixed_batches(prepared.val, d.batch_size, d.pack, d.pack_length, pad) if prepared.val else []
        self.step = 0
        self.nonfinite_total = 0
        self.nonfinite_run = 0
        self.status_now = "training"
        self.lost: set[str] = set()  # replicas that failed or vanished
        self.known: set[str] = set()  # replicas of the last route
        self.epochs: dict[str, int] = {}  # peer -> step, as last asked
        self.replicated = False
        self.full_route: list[list[StageRecord]] = []  # every announced replica, as of the last route()
        self.metrics = runfolder.MetricsLog(self.run_dir)

    # -- stages -----------------------------------------------------------------------------------
    def _set_status(self, status: str, why: str) -> None:
        if status != self.status_now and self.status_now != "degraded":
            self.status_now = status
            log.info("pipeline %s: %s", status, why)
            self.on_status(status, why)

    def route(self) -> list[list[StageRecord]]:
        """The stages to use for this step: per span, the replicas already at this step (a lagging
        one is catching up from its peers); notices replicas that came and went."""
        route = self.full_route = self.client.route()
        peers = {r.peer for g in route for r in g}
        gone = self.known - peers
        if gone:
            self.lost |= gone
            self._set_status("degraded", f"lost {len(gone)} stage replica(s); continuing with the others")
        self.known = peers
        if any(len(g) > 1 for g in route) and not self.replicated:
            self.replicated = True
            self._set_status("syncing", "stage replicas average their LoRA gradients")
        return [[r for r in g if self.epochs.get(r.peer, r.epoch) == self.step] or g for g in route]

    def stage_epochs(self, route: list[list[StageRecord]]) -> dict[str, int]:
        """{peer: step} of every reachable replica."""
        out = {}
        for replicas in route:
            for r in replicas:
                if self.client.is_dead(r):
                    self._lose(r)
                    continue
                try:
                    out[r.peer] = int(self.client.stage_info(r)["epoch"])
                except StageUnreachable:
                    self._lose(r)
        return out

    def _lose(self, r: StageRecord) -> None:
        if r.peer not in self.lost:
            self.lost.add(r.peer)
            self._set_status("degraded", f"stage {r.span_label} replica {r.peer[-8:]} lost; continuing with the others")

    def wait_for_step(self, route: list[list[StageRecord]], step: int, grace_s: float = 10.0) -> None:
        """Block until the stages applied `step`: every reachable replica, or, after `grace_s`, at
        least one replica of every span (a straggler catches up from its peers and is left out
        of the route until then)."""
        t0 = time.monotonic()
        while True:
            self.check_stages()
            self.epochs = epochs = self.stage_epochs(route)
            spans_done = all(any(epochs.get(r.peer, -1) >= step for r in g) for g in route)
            if spans_done and (all(e >= step for e in epochs.values()) or time.monotonic() - t0 > grace_s):
                return
            if time.monotonic() - t0 > self.s.step_timeout:
                late = [g[0].span_label for g in route if not any(epochs.get(r.peer, -1) >= step for r in g)]
                raise GtExtError(f"pipeline run {self.s.run}: {', '.join(late)} did not apply step {step} "
                                 f"in {self.s.step_timeout:.0f} s")
            time.sleep(0.05)

    # -- losses -------------------------------------------------------------------------------------
    def micro_step(self, route: list[list[StageRecord]], batch: dict[str, Any], scale: float,
                   ref: torch.Tensor | None = None) -> tuple[float, dict[str, float], bool]:
        """Forward, loss here, backward through the stages, for one micro-batch. `scale` turns the
        micro-batch's loss into its share of the step's loss (times grad_accum, see module doc).
        Returns (loss value for the log, extra metrics, finite)."""
        logp, kept = self.model.forward(route, batch, keep=True)
        leaf = logp.detach().requires_grad_(True)
        extra: dict[str, float] = {}
        if self.cfg.mode == "sft":
            total, _ = sft_sum(leaf, batch)
            value = float(total.detach())
            (total * scale).backward()
        else:
            if ref is None:
                ref_tok, _ = self.model.forward(route, batch, adapters=False)
                ref = sequence_logps(ref_tok, batch)
            pol = sequence_logps(leaf, batch)
            loss, metrics = losses.dpo_loss(pol[0::2], pol[1::2], ref[0::2], ref[1::2], self.cfg.dpo.beta)
            extra = {k: float(v) for k, v in metrics.items()}
            value = float(loss.detach())
            (loss * scale).backward()
        grad = leaf.grad
        finite = math.isfinite(value) and bool(torch.isfinite(grad).all())
        if not finite:
            # Never send a NaN: the micro-batch contributes nothing (the stages still count it).
            grad = torch.zeros_like(grad)
        self.model.backward(route, kept, grad)
        return value, extra, finite

    @torch.no_grad()
    def evaluate(self, route: list[list[StageRecord]]) -> float | None:
        """Validation loss through the stages: token-weighted NLL (SFT) or pair-weighted DPO loss."""
        if not self.val_batches:
            return None
        num, den = 0.0, 0
        for b in self.val_batches:
            logp, _ = self.model.forward(route, b)
            if self.cfg.mode == "sft":
                s, n = sft_sum(logp, b)
                num, den = num + float(s), den + n
            else:
                ref = sequence_logps(self.model.forward(route, b, adapters=False)[0], b)
                pol = sequence_logps(logp, b)
                loss, _ = losses.dpo_loss(pol[0::2], pol[1::2], ref[0::2], ref[1::2], self.cfg.dpo.beta)
                n = b["n_examples"] // 2
                num, den = num + float(loss) * n, den + n
        return num / max(den, 1)

    # -- checkpoints --------------------------------------------------------------------------------
    def gathered(self, route: list[list[StageRecord]]) -> GatheredAdapter:
        """Every stage's LoRA as one PEFT adapter (global layer indices)."""
        from gt_ext.models import resolve_model_dir

        state, at = gather_adapter(self.client, route)
        if at != self.step:
            raise GtExtError(f"gathered the adapter of step {at}, expected {self.step}")
        return GatheredAdapter(state, self.cfg.lora, resolve_model_dir(self.cfg.base_model))

    def save_checkpoint(self, route: list[list[StageRecord]]) -> Path:
        """checkpoints/step-N: the gathered adapter + trainer.pt (the stages hold the optimizer)."""
        state = checkpoint.TrainerState(
            step=self.step, optimizer={}, scheduler=None, data=self.loader.state_dict(),
            nonfinite_total=self.nonfinite_total, nonfinite_run=self.nonfinite_run,
            extra={"backend": "pipeline", "run": self.s.run,
                   "stages": [f"{g[0].first}:{g[0].last}" for g in route]})
        return checkpoint.save(self.run_dir, self.gathered(route), state, self.cfg.keep_checkpoints)

    def seek(self, step: int) -> None:
        """Put the data position where a run that took `step` steps has it (it is a function of
        the step: `grad_accum` micro-batches per step from the seeded loader)."""
        d = self.cfg.data
        self.loader = BatchLoader(self.p.train, d.batch_size, d.pack, d.pack_length, d.seed, self.loader.pad_id)
        self.loader.advance(step * self.cfg.optim.grad_accum)
        self.step = step

    # -- the loop -----------------------------------------------------------------------------------
    def train(self, resume: bool = False) -> dict[str, Any]:
        """Run to `max_steps` (or the time limits); returns the metrics for run.json."""
        from tqdm import tqdm

        cfg = self.cfg
        route = self.client.wait_for_route(self.s.route_timeout, check=self.check_stages)
        self.known = {r.peer for g in route for r in g}
        self.epochs = epochs = self.stage_epochs(route)
        at = min(epochs.values()) if epochs else 0
        if at and not resume:
            raise GtExtError(f"pipeline run {self.s.run}: stages are at step {at}; pass --resume to continue "
                             "that run, or start stages under another --run")
        history: list[dict[str, Any]] = []
        if resume and at:
            self.seek(at)
            history = self.metrics.keep_until(at)
            val_start = next((r["val_loss"] for r in history if r.get("step") == 0 and "val_loss" in r), None)
            log.info("resuming pipeline run %s at step %d", self.s.run, at)
        else:
            self.metrics.reset()
            val_start = self.evaluate(route)
            rec0 = {"step": 0, "val_loss": val_start}
            self.metrics.append(rec0)
            history.append(rec0)
        for g in route:  # drop gradients a killed trainer left accumulated toward an unfinished step
            for r in g:
                try:
                    self.client.reset(r)
                except Exception as e:
                    log.debug("reset %s: %s", r.peer, e)
        if cfg.mode == "dpo" and cfg.dpo.precompute_ref:
            raise GtExtError("dpo.precompute_ref is not supported by the pipeline backend (reference "
                             "log-probs are computed per batch with LoRA off)")

        from gt_ext.train.loop import lr_lambda

        lr_at = lr_lambda(cfg)
        started, cpu_started = time.perf_counter(), time.process_time()
        tokens_seen, status, message = 0, "done", ""
        session_start = self.step
        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=not self.progress, desc="pipeline", unit="step")
        try:
            while self.step < cfg.max_steps:
                t0 = time.perf_counter()
                self.model.hop_bytes = self.model.hop_tokens = 0
                route = self.route()
                # One replica per span takes all of this step's micro-batches (the next one the
                # next step): each replica then either holds the whole step or none of it, so a
                # replica that misses the averaging round still ends at the exact update
                # (node0_patches.optim).
                self.model.prefer = self.step
                G = cfg.optim.grad_accum
                micro = [self.loader.next_batch() for _ in range(G)]
                ntok = sum(batch_tokens(b) for b in micro)
                if cfg.mode == "sft":
                    total = sum(int((b["targets"] != IGNORE).sum()) for b in micro)
                    scales = [G / max(total, 1)] * G
                else:
                    pairs = sum(b["n_examples"] // 2 for b in micro)
                    scales = [G * (b["n_examples"] // 2) / max(pairs, 1) for b in micro]
                value, extra, finite = 0.0, {}, True
                for b, scale in zip(micro, scales, strict=True):
                    v, m, ok = self.micro_step(route, b, scale)
                    finite &= ok
                    value += v * (scale / G)  # SFT: sum/total; DPO: pair-weighted mean
                    for k, x in m.items():
                        extra[k] = extra.get(k, 0.0) + x * scale / G
                self.step += 1
                # Every announced replica, not only this step's: one that died since is noticed
                # here (its announcement outlives it by seconds), whichever replica took the step.
                self.wait_for_step(self.full_route, self.step)
                if finite:
                    self.nonfinite_run = 0
                else:
                    self.nonfinite_total += 1
                    self.nonfinite_run += 1
                    log.warning("step %d: non-finite loss/gradient in a micro-batch, its update was skipped", self.step)
                dt = time.perf_counter() - t0
                tokens_seen += ntok
                rec: dict[str, Any] = {"step": self.step, "loss": value if finite else None,
                                       "lr": cfg.optim.lr * lr_at(self.step - 1), "tokens": ntok,
                                       "tokens_per_s": ntok / dt, "epoch": self.loader.epoch,
                                       "replicas": [len(g) for g in route],
                                       "hop_bytes_per_token": self.model.hop_bytes / max(self.model.hop_tokens, 1)}
                if not finite:
                    rec["skipped"] = True
                rec.update(extra)
                last = self.step == cfg.max_steps
                if (cfg.eval_every and self.step % cfg.eval_every == 0) or last:
                    rec["val_loss"] = self.evaluate(route)
                self.metrics.append(rec)
                history.append(rec)
                self.publish(rec)
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}", tok_s=f"{ntok / dt:.0f}")
                if self.nonfinite_run >= cfg.max_nonfinite:
                    status = "failed"
                    message = f"stopped after {self.nonfinite_run} non-finite steps in a row at step {self.step}"
                    break
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and not last:
                    self.save_checkpoint(route)
                self.on_step(self.step, rec)
                if self.s.stop_after_steps and self.step - session_start >= self.s.stop_after_steps and not last:
                    message = f"stopped after {self.s.stop_after_steps} steps this session (resume to continue)"
                    status = "stopped"
                    break
                over_wall = cfg.max_time_s is not None and time.perf_counter() - started > cfg.max_time_s
                over_cpu = cfg.max_cpu_s is not None and time.process_time() - cpu_started > cfg.max_cpu_s
                if (over_wall or over_cpu) and not last:
                    status = "stopped"  # resumable, as gt-ext train's
                    message = f"{'wall' if over_wall else 'CPU'} time limit reached at step {self.step}"
                    rec_eval = self.evaluate(route)
                    history.append({"step": self.step, "val_loss": rec_eval})
                    self.metrics.append({"step": self.step, "val_loss": rec_eval, "time_limit": True})
                    break
        finally:
            bar.close()
        route = self.client.route()
        self.save_checkpoint(route)
        if status == "done":
            from gt_ext.train.lora import save_adapter

            save_adapter(self.gathered(route), self.run_dir / runfolder.ADAPTER)
        elapsed = time.perf_counter() - started
        vals = [r["val_loss"] for r in history if r.get("val_loss") is not None]
        runfolder.plot_losses(history, self.run_dir / runfolder.PLOT)
        if status == "done" and self.lost:
            status = "degraded"
        self.publish(next((r for r in reversed(history) if r.get("loss") is not None), {}), state=status)
        return {"status": status, "message": message, "val_loss_start": val_start,
                "val_loss_end": vals[-1] if vals else None, "steps": self.step,
                "tokens_per_s": tokens_seen / elapsed if elapsed > 0 else 0.0,
                "nonfinite_steps": self.nonfinite_total, "train_wall_s": elapsed,
                "train_cpu_s": time.process_time() - cpu_started, "lost_replicas": len(self.lost)}

    def publish(self, rec: dict[str, Any], state: str = "running") -> None:
        """The trainer's line in `gt-ext swarm status` (best effort)."""
        from gt_ext.swarm.dht import publish_metrics

        try:
            publish_metrics(self.client.dht, self.s.run, {
                "role": "trainer", "state": state, "epoch": self.step, "loss": rec.get("loss"),
                "val_loss": rec.get("val_loss"), "tokens_per_s": rec.get("tokens_per_s"),
                "peers": sum(rec.get("replicas", [])), "nan_skips": self.nonfinite_total,
                "updated": time.time()})
        except Exception as e:  # metrics never stop training
            log.debug("metrics publish failed: %s", e)


# ---------------------------------------------------------------------------------------------------
# One run end to end
# ---------------------------------------------------------------------------------------------------


def _mark_job(status: str, why: str) -> None:
    from gt_ext.jobs.bead import mark_from_env

    try:
        mark_from_env(status, why)
    except Exception as e:  # a job bead is bookkeeping: training goes on without it
        log.warning("could not mark the job bead %s: %s", status, e)


def pipeline_settings(out: Path, run: str, stages: int | None, initial_peers: list[str], key_file: Path | None,
                      compression_rate: int | None = None, subspace: Path | None = None,
                      node0: Path | None = None) -> PipelineSettings:
    """Settings from `gt-ext train --backend pipeline` options. Local stages without a key get a
    fresh one in the run folder (pipeline.key, 0600): they are authenticated all the same."""
    from gt_ext.swarm.auth import KEY_ENV
    from gt_ext.swarm.dht import check_initial_peers

    check_run(run)
    check_initial_peers(initial_peers)
    if (compression_rate is None) != (subspace is None):
        raise GtExtError("--compression-rate and --subspace go together")
    if key_file is None and os.environ.get(KEY_ENV):
        key_file = Path(os.environ[KEY_ENV])
    if key_file is None:
        if initial_peers:
            raise GtExtError("--initial-peers needs the stages' --swarm-key")
        key_file = Path(out) / "pipeline.key"
        if not key_file.is_file():
            Path(out).mkdir(parents=True, exist_ok=True)
            SwarmKey.generate().save(key_file)
    return PipelineSettings(run=run, initial_peers=list(initial_peers), key=SwarmKey.load(key_file), key_file=key_file,
                            stages=stages, compression_rate=compression_rate, subspace=subspace, node0=node0)


def run_pipeline_training(prepared: Any, out: str | Path, s: PipelineSettings, resume: bool = False,
                          progress: bool = True, on_status: Callable[[str, str], None] | None = None,
                          on_step: Callable[[int, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train through pipeline stages and write the run folder; returns the final run.json.
    `on_status(status, why)` hears `syncing`/`degraded` (default: the job bead from the
    environment), `on_step(step, metrics)` every step."""
    import yaml

    from gt_ext.models import resolve_model_dir
    from gt_ext.pipeline.stage import model_fingerprint

    check_run(s.run)
    if s.stages and not s.initial_peers:
        from node0_patches import resolve_checkout

        resolve_checkout(s.node0)  # the local stages run node0: say so now, not after a timeout
    p, cfg = prepared, prepared.cfg
    out = Path(out)
    config = config_to_dict(cfg)
    runfolder.check_new_or_resumable(out, config, resume)
    out.mkdir(parents=True, exist_ok=True)
    pipeline_meta = {"run": s.run, "stages": s.stages, "compression_rate": s.compression_rate}

    def record(status: str, metrics: dict[str, Any]) -> dict[str, Any]:
        return runfolder.run_record(
            role=p.role, task=p.task, config=config, corpus=p.corpus, corpus_hash=p.corpus_hash,
            examples=len(p.train) if cfg.mode == "sft" else 0, dpo_pairs=len(p.train) if cfg.mode == "dpo" else 0,
            status=status, metrics=metrics, parent=cfg.role_adapter,
            lora={"r": cfg.lora.r, "alpha": cfg.lora.alpha, "targets": list(cfg.lora.targets)},
            truncated=p.train_stats.truncated, backend="pipeline", pipeline=pipeline_meta)

    if cfg.role_adapter:
        raise GtExtError("role_adapter (task adapters on a role model) is not supported by the pipeline backend yet")
    runfolder.write_run_json(out, record("running", {}))
    model_dir = resolve_model_dir(cfg.base_model)
    base_hash = model_fingerprint(model_dir)
    settings_hash = settings_fingerprint(cfg, s.compression_rate)
    local = None
    client = None
    trainer = None
    try:
        spawn = bool(s.stages) and not s.initial_peers
        # With local stages this node is their bootstrap peer, so it is a full (listening) DHT node.
        client = PipelineClient(s.run, s.initial_peers, s.key, base_hash=base_hash, settings_hash=settings_hash,
                                client_mode=not spawn)
        if spawn:
            cfg_file = out / "pipeline-config.yaml"
            cfg_file.write_text(yaml.safe_dump(config))
            addrs = [str(a) for a in client.dht.get_visible_maddrs()]
            local = LocalStages(int(s.stages), s.run, out, cfg_file, s.key_file, addrs, s)
        trainer = PipelineTrainer(p, out, client, s, progress=progress, on_status=on_status or _mark_job,
                                  on_step=on_step, check_stages=local.check if local is not None else None)
        metrics = trainer.train(resume=resume)
    except BaseException:
        runfolder.write_run_json(out, record("failed", {"steps": trainer.step if trainer else 0}))
        raise
    finally:
        if client is not None:
            client.close()
        if local is not None:
            local.close()
    status = metrics.pop("status")
    if not metrics.get("message"):
        metrics.pop("message", None)
    final = record(status, metrics)
    runfolder.write_run_json(out, final)
    return final
