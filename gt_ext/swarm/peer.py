"""One swarm peer: a hivemind DHT node plus the training core's SFT loop, averaging LoRA grads only.

    result = run_peer(corpus, role, out_dir, train_cfg, SwarmSettings(...), key)

A thin recipe over the training core (`gt_ext.train`): data (`prepare`, `BatchLoader`), loss
(`sft_loss_sum`), LoRA (`load_base_for_training`), config (`TrainConfig`, `lr_lambda`), validation
(`validation_loss`), non-finite rule, checkpoints (`gt_ext.train.checkpoint`: the same format, so a
peer resumes a `gt-ext train` checkpoint and the other way round) and the run folder
(`gt_ext.train.runfolder`: run.json, metrics.jsonl, loss.png). What is swarm-specific lives here:

* a global step (= `TrainConfig.max_steps` unit) happens when the peers together accumulated
  `target_batch_size` rows; gradients are averaged across the group, weighted by rows;
* with `min_peers` > 1 the first global step waits until hivemind's progress tracker sees them all
  (`SwarmProgressTracker.hold_first_step`), so no peer starts on its own gradients alone;
* a peer that joins late (or falls behind) downloads adapter + optimizer state from a peer;
* a non-finite loss or gradient on one peer is skipped there and never sent to anyone (and, as in
  the Trainer, `max_nonfinite` in a row stop the peer with status "failed" and a checkpoint);
* peers publish metrics in the DHT; a peer that stops publishing without saying "done" is
  counted as lost and the run is marked `degraded` (not failed);
* the run folder has the same layout as a local run (run.json, adapter/, checkpoints/step-N/,
  metrics.jsonl, loss.png), plus swarm.json (this peer's addresses, for --initial-peers).
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from gt_ext.atomic import atomic_write_json
from gt_ext.errors import GtExtError
from gt_ext.swarm import dht as swarm_dht
from gt_ext.swarm.auth import SwarmKey, publish_membership
from gt_ext.swarm.optim import bytes_per_round, make_optimizer
from gt_ext.train import checkpoint, runfolder
from gt_ext.train.config import TrainConfig, config_to_dict
from gt_ext.train.loop import StepCallback, lr_lambda, nonfinite_stop_message, pad_id, validation_loss

log = logging.getLogger(__name__)


class SwarmSettings(BaseModel):
    """How a peer finds and trains with the others (the training itself is `TrainConfig`)."""

    model_config = ConfigDict(extra="forbid")

    run_id: str | None = Field(None, description="swarm name; default gt-<role>[-<task>]")
    initial_peers: list[str] = Field(default_factory=list)
    listen: str | None = Field(None, description="HOST:PORT or multiaddr; default 127.0.0.1, free port")
    target_batch_size: int | None = Field(None, ge=1, description="rows per global step, all peers together")
    matchmaking_time: float = Field(5.0, gt=0, description="seconds to gather a group; > DHT refresh")
    averaging_timeout: float = Field(60.0, gt=0)
    power_sgd_rank: int | None = Field(None, ge=1, description="low-rank gradient compression")
    average_state_every: int = Field(1, ge=1, description="average adapter params every N global steps")
    lockstep: bool = Field(False, description="each peer adds one batch per global step and waits for the others")
    lockstep_timeout: float = Field(120.0, gt=0)
    shard: tuple[int, int] | None = Field(None, description="(k, n): take rows k*B..(k+1)*B of a shared n*B batch")
    metrics_period_s: float = Field(1.0, gt=0)
    stale_after_s: float = Field(30.0, gt=0, description="a running peer silent this long is counted lost")
    min_peers: int = Field(1, ge=1, description="wait until this many peers (self included) are up")
    group_size: int | None = Field(None, ge=2, description="averaging group size; rounds start once it is full")
    join_at_step: int = Field(0, ge=0, description="stand by (model loaded) until the swarm reached this step")
    wait_for_peers_s: float = Field(300.0, gt=0, description="how long to wait for min_peers")
    inject_nan_every: int = Field(0, ge=0, description="fault drill: make every Nth local loss NaN")


def default_run_id(role: str, task: str | None) -> str:
    """The swarm name peers of one role (and task) share."""
    return f"gt-{role}" + (f"-{task}" if task else "")


def shard_batch(batch: dict[str, Any], k: int, n: int) -> dict[str, Any]:
    """Rows k*B/n .. (k+1)*B/n of a collated batch (B divisible by n), example ids renumbered."""
    B = batch["input_ids"].shape[0]
    if B % n:
        raise GtExtError(f"batch of {B} rows cannot be split into {n} equal shards")
    lo, hi = k * B // n, (k + 1) * B // n
    ex = batch["example_index"][lo:hi].clone()
    real = ex >= 0
    if real.any():
        ex[real] -= int(ex[real].min())  # examples are numbered in row order: keep that, from 0
    return {
        "input_ids": batch["input_ids"][lo:hi],
        "targets": batch["targets"][lo:hi],
        "position_ids": batch["position_ids"][lo:hi],
        "example_index": ex,
        "n_examples": int(ex.max()) + 1 if real.any() else 0,
        "item_ids": [],
    }


class _Metrics:
    """Publishes this peer's metrics in the DHT on a timer and watches for lost peers."""

    def __init__(self, dht: Any, run_id: str, key: SwarmKey | None, settings: SwarmSettings,
                 on_lost: Any = None):
        self.dht, self.run_id, self.key, self.s = dht, run_id, key, settings
        self.on_lost = on_lost  # called with a peer id when that peer is counted as lost
        self.current: dict[str, Any] = {"state": "starting"}
        self.lost: set[str] = set()
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._last_membership = 0.0
        self._thread = threading.Thread(target=self._run, name="swarm-metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def update(self, **kw: Any) -> None:
        with self._lock:
            self.current.update(kw)

    def publish_now(self) -> None:
        from hivemind.utils.timed_storage import get_dht_time

        with self._lock:
            rec = dict(self.current, updated=get_dht_time())
        # A dead peer's record must outlive the stale threshold so the others can notice it.
        swarm_dht.publish_metrics(self.dht, self.run_id, rec, ttl_s=max(300.0, 4 * self.s.stale_after_s))
        if self.key is not None and time.monotonic() - self._last_membership > 30:
            publish_membership(self.dht, self.run_id, self.key)
            self._last_membership = time.monotonic()
        self._watch(get_dht_time())

    def _watch(self, now: float) -> None:
        me = self.dht.peer_id.to_bytes().hex()
        for pid, m in swarm_dht.read_metrics(self.dht, self.run_id).items():
            if pid == me:
                continue
            self.seen.add(pid)
            silent = now - float(m.get("updated", now))
            if m.get("state") == "running" and silent > self.s.stale_after_s and pid not in self.lost:
                log.warning("peer %s… silent for %.0f s: continuing without it (run degraded)", pid[-8:], silent)
                self.lost.add(pid)
                if self.on_lost is not None:
                    self.on_lost(pid)

    def wait_for_peers(self, n: int, timeout: float) -> int:
        """Block until `n` peers (self included) are up, so early peers do not train alone."""
        deadline = time.monotonic() + timeout
        while True:
            live = [m for m in swarm_dht.read_metrics(self.dht, self.run_id).values()
                    if m.get("state") in ("waiting", "running")]
            if len(live) >= n:
                log.info("%d peers are up: starting", len(live))
                return len(live)
            if time.monotonic() >= deadline:
                raise GtExtError(f"swarm {self.run_id}: only {len(live)} of {n} peers came up in {timeout:.0f} s")
            time.sleep(0.3)

    def _run(self) -> None:
        while not self._stop.wait(self.s.metrics_period_s):
            try:
                self.publish_now()
            except Exception as e:  # the DHT may be shutting down; metrics must never kill training
                log.debug("metrics publish failed: %s", e)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _wait_for_swarm_step(dht: Any, run_id: str, step: int, timeout: float) -> None:
    """Stand by until some peer of the swarm published a global step >= `step` (staged joins)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        steps = [m.get("epoch") or 0 for m in swarm_dht.read_metrics(dht, run_id).values()]
        if steps and max(steps) >= step:
            log.info("swarm %s reached step %d: joining", run_id, max(steps))
            return
        time.sleep(0.3)
    raise GtExtError(f"swarm {run_id} did not reach step {step} in {timeout:.0f} s")


def _batches(items: list[Any], cfg: TrainConfig, settings: SwarmSettings, peer_id: str, pad: int,
             ckpt: Path | None) -> tuple[Any, Callable[[], dict[str, Any]]]:
    """(BatchLoader, next_batch) of this peer: its own seeded order, or its rows of a shared batch."""
    from gt_ext.train.data import BatchLoader

    d = cfg.data
    if settings.shard:
        k, n = settings.shard
        # Every shard walks the same global batch order and takes its own rows of it.
        loader = BatchLoader(items, d.batch_size * n, d.pack, d.pack_length, d.seed, pad)
        return loader, lambda: shard_batch(loader.next_batch(), k, n)
    # Different peers should see different batches: offset the seed by the peer id (a resumed peer
    # keeps the order of its checkpoint, also one `gt-ext train` wrote).
    seed = d.seed + random.Random(peer_id).randrange(1 << 30)
    if ckpt is not None:
        seed = int(checkpoint.read_state(ckpt).data.get("seed", seed))
    loader = BatchLoader(items, d.batch_size, d.pack, d.pack_length, seed, pad)
    return loader, loader.next_batch


def _wire_costs(model: Any, params: list[Any], power_sgd_rank: int | None) -> dict[str, Any]:
    """What one averaging round sends (run.json `swarm`): LoRA only, vs the full model's gradients."""
    return {"lora_params": sum(p.numel() for p in params), "total_params": sum(p.numel() for p in model.parameters()),
            "bytes_per_round_2peers": {
                "lora": bytes_per_round(params, 2),
                "lora_powersgd": bytes_per_round(params, 2, power_sgd_rank) if power_sgd_rank else None,
                "full": bytes_per_round(list(model.parameters()), 2)}}


def run_peer(
    corpus: str | Path,
    role: str,
    out_dir: str | Path,
    cfg: TrainConfig,
    settings: SwarmSettings,
    key: SwarmKey | None = None,
    task: str | None = None,
    resume: bool = False,
    stop: threading.Event | None = None,
    progress: bool = False,
    callbacks: list[StepCallback] | None = None,
) -> dict[str, Any]:
    """Train as one peer until `cfg.max_steps` global steps; write the run folder; return run.json.

    `resume` continues the newest checkpoint in `out_dir` (one a peer or `gt-ext train` wrote);
    `callbacks` are called `(step, metrics row)` after every global step, as the Trainer's."""
    from gt_ext.train.data import batch_tokens, fixed_batches
    from gt_ext.train.lora import load_base_for_training, save_adapter, trainable_parameters
    from gt_ext.train.losses import sft_loss_sum
    from gt_ext.train.run import prepare, run_json_for

    if cfg.mode != "sft":
        raise GtExtError(f"swarm training supports mode=sft only (got {cfg.mode!r})")
    run_dir = Path(out_dir)
    run_id = settings.run_id or default_run_id(role, task)
    stop = stop or threading.Event()
    if settings.shard and not 0 <= settings.shard[0] < settings.shard[1]:
        raise GtExtError(f"--shard {settings.shard[0]}/{settings.shard[1]}: need 0 <= k < n")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    # Data and run folder first: a bad corpus or a taken --out fails before any network or model work.
    prep = prepare(role, corpus, task, cfg=cfg)
    runfolder.check_new_or_resumable(run_dir, config_to_dict(cfg), resume)
    ckpt = checkpoint.latest(run_dir) if resume else None
    if resume and ckpt is None:
        log.warning("--resume: no checkpoint in %s, starting fresh", checkpoint.checkpoints_dir(run_dir))
    model, tok = load_base_for_training(cfg)
    d = cfg.data
    pad = pad_id(tok)
    val_batches = fixed_batches(prep.val, d.batch_size, d.pack, d.pack_length, pad)

    # hivemind signs progress records with a process-wide RSA key; a peer forked from a process
    # that already made one would share it with its siblings, and their records would overwrite
    # each other. Every peer gets its own key.
    from hivemind.utils.crypto import RSAPrivateKey

    RSAPrivateKey._process_wide_key = None
    dht = swarm_dht.start_dht(settings.initial_peers, settings.listen, key, run_id)
    opt = None
    metrics = None
    record: dict[str, Any] = {}
    from gt_ext.jobs.bead import StatusReporter

    job = StatusReporter()  # the job bead's status, when a formula job runs this peer
    try:
        me = dht.peer_id.to_base58()
        addrs = swarm_dht.visible_addrs(dht)
        atomic_write_json(run_dir / "swarm.json", {"run_id": run_id, "peer_id": me, "addrs": addrs,
                                                   "key_fingerprint": key.fingerprint() if key else None})
        log.info("peer %s of swarm %s listening on %s", me, run_id, " ".join(addrs))

        loader, next_batch = _batches(prep.train, cfg, settings, me, pad, ckpt)

        if settings.join_at_step:
            _wait_for_swarm_step(dht, run_id, settings.join_at_step, settings.wait_for_peers_s)
        params = trainable_parameters(model)
        target = settings.target_batch_size or d.batch_size * 2
        o = cfg.optim
        opt = make_optimizer(
            dht, params, run_id, target, d.batch_size, lr=o.lr,
            lr_lambda=lr_lambda(cfg),  # the training core's warmup + cosine, per swarm step
            betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay,
            matchmaking_time=settings.matchmaking_time, averaging_timeout=settings.averaging_timeout,
            power_sgd_rank=settings.power_sgd_rank, swarm_key=key,
            average_state_every=settings.average_state_every, lockstep=settings.lockstep,
            group_size=settings.group_size,
        )
        sched = opt.state_averager.scheduler
        nonfinite_total = nonfinite_run = 0
        resumed_from = None
        if ckpt is not None:
            state = checkpoint.load(ckpt, model)
            # hivemind's load_state_dict takes the global step from the state's "local_epoch".
            opt.load_state_dict({**state.optimizer, "state": {**state.optimizer["state"], "local_epoch": state.step}})
            if sched is not None and state.scheduler is not None:
                sched.load_state_dict(state.scheduler)
            loader.load_state_dict(state.data)
            nonfinite_total, nonfinite_run = state.nonfinite_total, state.nonfinite_run
            resumed_from = state.step
            log.info("resumed from %s", ckpt)

        def save_checkpoint(step: int) -> Path:
            state = checkpoint.TrainerState(
                step=step, optimizer=opt.opt.state_dict(), scheduler=sched.state_dict() if sched else None,
                data=loader.state_dict(), nonfinite_total=nonfinite_total, nonfinite_run=nonfinite_run,
                extra={"swarm_run_id": run_id, "peer_id": me})
            return checkpoint.save(run_dir, model, state, cfg.keep_checkpoints)

        swarm_info = {"run_id": run_id, "peer_id": me, "target_batch_size": target,
                      "settings": settings.model_dump(mode="json"), "resumed_from": resumed_from,
                      **_wire_costs(model, params, settings.power_sgd_rank)}
        record = run_json_for(prep, "running", {}, swarm=swarm_info)
        runfolder.write_run_json(run_dir, record)

        log_file = runfolder.MetricsLog(run_dir)
        if ckpt is not None:
            history = log_file.keep_until(resumed_from)  # steps after the checkpoint run again
            val_start = next((r["val_loss"] for r in history if r.get("step") == 0 and "val_loss" in r), None)
            last_val = next((r["val_loss"] for r in reversed(history) if r.get("val_loss") is not None), val_start)
        else:
            log_file.reset()
            val_start = last_val = validation_loss(model, val_batches, cfg)
            log_file.append({"step": 0, "val_loss": val_start})

        metrics = _Metrics(dht, run_id, key, settings,
                           on_lost=lambda pid: job.report("degraded", f"swarm {run_id}: lost peer {pid[-8:]}, going on"))
        metrics.update(state="running", epoch=opt.local_epoch, val_loss=last_val, loss=None,
                       tokens_per_s=0.0, peers=1, rounds=0, nan_skips=0)
        metrics.publish_now()
        metrics.start()
        if settings.min_peers > 1:
            metrics.wait_for_peers(settings.min_peers, settings.wait_for_peers_s)
            # They are up, but hivemind's tracker learns of a peer only from its progress records:
            # without this, each peer's first step can come before it has seen the others (alone).
            opt.tracker.hold_first_step(settings.min_peers, settings.wait_for_peers_s)

        model.train()
        local_steps = catch_ups = 0
        window_loss: list[float] = []
        tokens, t0 = 0, time.monotonic()
        status, message = "done", ""
        deadline = (time.monotonic() + cfg.max_time_s) if cfg.max_time_s else math.inf
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.max_steps, initial=opt.local_epoch, desc=f"swarm {run_id}", unit="step")
        while opt.local_epoch < cfg.max_steps and not stop.is_set() and time.monotonic() < deadline:
            epoch_before = opt.local_epoch
            batch = next_batch()
            total, n_tok = sft_loss_sum(model, batch)
            loss = total / max(n_tok, 1)
            local_steps += 1
            if settings.inject_nan_every and local_steps % settings.inject_nan_every == 0:
                loss = loss * float("nan")
            finite = bool(torch.isfinite(loss))
            if finite:
                loss.backward()
                finite = all(bool(torch.isfinite(p.grad).all()) for p in params if p.grad is not None)
            if not finite:
                # Skip here, never send it: the others must not see a NaN gradient.
                nonfinite_total += 1
                nonfinite_run += 1
                opt.zero_grad()
                log.warning("non-finite loss/gradient on this peer (step %d): batch skipped", opt.local_epoch)
                if nonfinite_run >= cfg.max_nonfinite:
                    status, message = "failed", nonfinite_stop_message(nonfinite_run, opt.local_epoch)
                    break
                continue
            nonfinite_run = 0
            if o.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, o.grad_clip)
            rows = int(batch["input_ids"].shape[0])
            opt.step(batch_size=rows)
            opt.zero_grad()
            if settings.lockstep and opt.local_epoch == epoch_before:
                if not opt.finish_epoch(settings.lockstep_timeout):
                    log.warning("lockstep: swarm did not reach the target batch in %.0f s", settings.lockstep_timeout)
            window_loss.append(loss.item())
            tokens += batch_tokens(batch)
            if opt.local_epoch > epoch_before + 1:
                catch_ups += 1  # downloaded state from a peer that was ahead
            if opt.local_epoch != epoch_before:
                step = opt.local_epoch
                tps = tokens / max(time.monotonic() - t0, 1e-9)
                peers = opt.tracker.global_progress.num_peers
                if peers > 1 and not metrics.lost:
                    job.report("syncing", f"swarm {run_id}: averaging with {peers - 1} other peer(s)")
                row: dict[str, Any] = {"step": step, "loss": sum(window_loss) / len(window_loss),
                                       "lr": opt.opt.param_groups[0]["lr"], "tokens_per_s": tps,
                                       "peers": peers, "nan_skips": nonfinite_total,
                                       "elapsed_s": time.monotonic() - t0}
                window_loss = []
                if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.max_steps:
                    last_val = row["val_loss"] = validation_loss(model, val_batches, cfg)
                log_file.append(row)
                metrics.update(epoch=step, loss=row["loss"], tokens_per_s=tps, peers=peers, rounds=step,
                               nan_skips=nonfinite_total, val_loss=last_val)
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.max_steps:
                    save_checkpoint(step)
                for cb in callbacks or []:
                    cb(step, row)
                if bar is not None:
                    bar.update(step - bar.n)
        if bar is not None:
            bar.close()

        val_end = validation_loss(model, val_batches, cfg)
        elapsed = time.monotonic() - t0
        if status != "failed":
            save_adapter(model, run_dir / runfolder.ADAPTER)
        save_checkpoint(opt.local_epoch)
        metrics.publish_now()  # last look for lost peers
        lost = sorted(metrics.lost)
        if status != "failed":
            if opt.local_epoch >= cfg.max_steps:
                status = "degraded" if lost else "done"
            else:  # cut by max_time_s or a stop request: resumable from the checkpoint just written
                status = "stopped"
        run_metrics = {"val_loss_start": val_start, "val_loss_end": val_end, "steps": opt.local_epoch,
                       "tokens_per_s": tokens / max(elapsed, 1e-9), "nonfinite_steps": nonfinite_total,
                       "local_batches": local_steps, "nan_skips": nonfinite_total, "catch_ups": catch_ups,
                       "local_rounds": opt.local_rounds, "state_loads": opt.state_loads,
                       "lost_peers": len(lost), "peers_seen": len(metrics.seen) + 1}
        if message:
            run_metrics["message"] = message
        record = run_json_for(prep, status, run_metrics, swarm=swarm_info)
        metrics.update(state="done", val_loss=val_end, epoch=opt.local_epoch)
        metrics.publish_now()
        runfolder.plot_losses(log_file.read(), run_dir / runfolder.PLOT)
        return record
    except BaseException:
        if record:
            record["status"] = "failed"
        raise
    finally:
        if record:
            runfolder.write_run_json(run_dir, record)
        if metrics is not None:
            metrics.stop()
        job.close()
        if opt is not None:
            try:
                opt.shutdown()
            except Exception as e:  # shutdown of a half-dead averager must not mask the real error
                log.debug("optimizer shutdown: %s", e)
        dht.shutdown()
