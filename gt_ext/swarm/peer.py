"""One swarm peer: a hivemind DHT node plus the training core's SFT loop, averaging LoRA grads only.

    result = run_peer(corpus, role, out_dir, train_cfg, SwarmSettings(...), key)

The data, loss, LoRA and config come from `gt_ext.train` (`load_items`/`BatchLoader`,
`sft_loss_sum`, `load_base_for_training`, `TrainConfig`). What is swarm-specific lives here:

* a global step (= `TrainConfig.max_steps` unit) happens when the peers together accumulated
  `target_batch_size` rows; gradients are averaged across the group, weighted by rows;
* a peer that joins late (or falls behind) downloads adapter + optimizer state from a peer;
* a non-finite loss or gradient on one peer is skipped there and never sent to anyone;
* peers publish metrics in the DHT; a peer that stops publishing without saying "done" is
  counted as lost and the run is marked `degraded` (not failed);
* the run folder has the same layout as a local run (run.json, adapter/, checkpoints/step-N/,
  metrics.jsonl, loss.png), plus swarm.json (this peer's addresses, for --initial-peers).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from gt_ext.atomic import atomic_write_json
from gt_ext.corpus import shards
from gt_ext.errors import GtExtError
from gt_ext.roles import check_role, check_task
from gt_ext.swarm import dht as swarm_dht
from gt_ext.swarm.auth import SwarmKey, publish_membership
from gt_ext.swarm.optim import bytes_per_round, make_optimizer
from gt_ext.train.config import TrainConfig, config_to_dict
from gt_ext.train.loop import lr_lambda

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


def _val_loss(model: Any, batches: list[dict[str, Any]]) -> float:
    """Token-weighted mean NLL over fixed validation batches."""
    from gt_ext.train.losses import sft_loss_sum

    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for b in batches:
            s, k = sft_loss_sum(model, b)
            total, n = total + float(s), n + k
    model.train(was_training)
    return total / max(n, 1)


def _plot(metrics_path: Path, out: Path) -> None:
    """loss.png from metrics.jsonl (train loss per step, val loss where measured)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label="train (this peer)")
    val = [(r["step"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="val")
    ax.set_xlabel("global step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, out)


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


def _write_checkpoint(run_dir: Path, step: int, model: Any, opt: Any, loader: Any, keep: int) -> Path:
    """checkpoints/step-N/: adapter + optimizer (with epoch) + data position + RNG, written atomically."""
    from gt_ext.train.lora import save_adapter

    ckdir = run_dir / "checkpoints"
    final = ckdir / f"step-{step}"
    tmp = ckdir / f".step-{step}.tmp"
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    save_adapter(model, tmp / "adapter")
    torch.save({"optimizer": opt.state_dict(), "rng": torch.get_rng_state()}, tmp / "optimizer.pt")
    atomic_write_json(tmp / "state.json", {"step": step, "data": loader.state_dict()})
    import shutil

    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    old = sorted((p for p in ckdir.glob("step-*") if p.is_dir()), key=lambda p: int(p.name.split("-")[1]))
    for p in old[:-keep]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def _load_checkpoint(ckpt: Path, model: Any, opt: Any, loader: Any) -> int:
    from gt_ext.train.lora import load_adapter_weights

    if not (ckpt / "state.json").is_file():
        raise GtExtError(f"--resume {ckpt}: not a checkpoint folder (no state.json)")
    load_adapter_weights(model, ckpt / "adapter")
    state = torch.load(ckpt / "optimizer.pt", weights_only=False)
    opt.load_state_dict(state["optimizer"])
    meta = json.loads((ckpt / "state.json").read_text())
    loader.load_state_dict(meta["data"])
    return int(meta["step"])


def run_peer(
    corpus: str | Path,
    role: str,
    out_dir: str | Path,
    cfg: TrainConfig,
    settings: SwarmSettings,
    key: SwarmKey | None = None,
    task: str | None = None,
    resume: str | Path | None = None,
    stop: threading.Event | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Train as one peer until `cfg.max_steps` global steps; write the run folder; return run.json."""
    from gt_ext.train.data import BatchLoader, batch_tokens, fixed_batches, load_items
    from gt_ext.train.lora import load_base_for_training, save_adapter, trainable_parameters
    from gt_ext.train.losses import sft_loss_sum

    check_role(role)
    if task is not None:
        check_task(task)
    if cfg.mode != "sft":
        raise GtExtError(f"swarm training supports mode=sft only (got {cfg.mode!r})")
    run_dir = Path(out_dir)
    run_id = settings.run_id or default_run_id(role, task)
    stop = stop or threading.Event()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    # Data first: a bad corpus fails before any network or model work.
    model, tok = load_base_for_training(cfg)
    d = cfg.data
    train_items, train_stats = load_items(corpus, "sft", role, task, "train", tok, d.max_length, d.max_train_examples)
    if not train_items:
        raise GtExtError(f"corpus {corpus}: no sft training examples for role {role!r}" + (f" task {task!r}" if task else ""))
    val_items, _ = load_items(corpus, "sft", role, task, "val", tok, d.max_length, d.max_val_examples)
    val_items = val_items or train_items[: max(1, min(len(train_items), 16))]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    val_batches = fixed_batches(val_items, d.batch_size, d.pack, d.pack_length, pad)

    # hivemind signs progress records with a process-wide RSA key; a peer forked from a process
    # that already made one would share it with its siblings, and their records would overwrite
    # each other. Every peer gets its own key.
    from hivemind.utils.crypto import RSAPrivateKey

    RSAPrivateKey._process_wide_key = None
    dht = swarm_dht.start_dht(settings.initial_peers, settings.listen, key, run_id)
    opt = None
    metrics = None
    status = "failed"
    info: dict[str, Any] = {}
    from gt_ext.jobs.bead import StatusReporter

    job = StatusReporter()
    try:
        me = dht.peer_id.to_base58()
        addrs = swarm_dht.visible_addrs(dht)
        atomic_write_json(run_dir / "swarm.json", {"run_id": run_id, "peer_id": me, "addrs": addrs,
                                                   "key_fingerprint": key.fingerprint() if key else None})
        log.info("peer %s of swarm %s listening on %s", me, run_id, " ".join(addrs))

        if settings.shard:
            k, n = settings.shard
            if not 0 <= k < n:
                raise GtExtError(f"--shard {k}/{n}: need 0 <= k < n")
            # Every shard walks the same global batch order and takes its own rows of it.
            loader = BatchLoader(train_items, d.batch_size * n, d.pack, d.pack_length, d.seed, pad)
            next_batch = lambda: shard_batch(loader.next_batch(), k, n)  # noqa: E731
        else:
            # Different peers should see different batches: offset the seed by the peer id
            # (a restarted peer keeps the order of the checkpoint it resumes).
            seed = d.seed + random.Random(me).randrange(1 << 30)
            if resume and (Path(resume) / "state.json").is_file():
                seed = int(json.loads((Path(resume) / "state.json").read_text())["data"].get("seed", seed))
            loader = BatchLoader(train_items, d.batch_size, d.pack, d.pack_length, seed, pad)
            next_batch = loader.next_batch

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
        resumed_from = _load_checkpoint(Path(resume), model, opt, loader) if resume else None

        n_total = sum(p.numel() for p in model.parameters())
        n_lora = sum(p.numel() for p in params)
        info = {
            "role": role, "task": task, "base_model": cfg.base_model, "config": config_to_dict(cfg),
            "corpus_hash": shards.corpus_hash(corpus), "examples": train_stats.items, "dpo_pairs": 0,
            "lora": {"r": cfg.lora.r, "alpha": cfg.lora.alpha, "targets": list(cfg.lora.targets)},
            "metrics": {}, "status": "running", "parent": None,
            "swarm": {"run_id": run_id, "peer_id": me, "target_batch_size": target,
                      "settings": settings.model_dump(mode="json"), "resumed_from": resumed_from,
                      "lora_params": n_lora, "total_params": n_total,
                      "bytes_per_round_2peers": {
                          "lora": bytes_per_round(params, 2),
                          "lora_powersgd": bytes_per_round(params, 2, settings.power_sgd_rank)
                          if settings.power_sgd_rank else None,
                          "full": bytes_per_round(list(model.parameters()), 2)}},
        }
        atomic_write_json(run_dir / "run.json", info)
        metrics_path = run_dir / "metrics.jsonl"
        if not resume and metrics_path.exists():
            metrics_path.unlink()

        metrics = _Metrics(dht, run_id, key, settings,
                           on_lost=lambda pid: job.report("degraded", f"swarm {run_id}: lost peer {pid[-8:]}, going on"))
        val_start = _val_loss(model, val_batches)
        metrics.update(state="running", epoch=opt.local_epoch, val_loss=val_start, loss=None,
                       tokens_per_s=0.0, peers=1, rounds=0, nan_skips=0)
        metrics.publish_now()
        metrics.start()
        if settings.min_peers > 1:
            metrics.wait_for_peers(settings.min_peers, settings.wait_for_peers_s)

        model.train()
        nan_skips = consecutive_bad = local_steps = catch_ups = 0
        window_loss: list[float] = []
        tokens, t0 = 0, time.monotonic()
        last_val = val_start
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
            if not torch.isfinite(loss):
                # Skip here, never send it: the others must not see a NaN gradient.
                nan_skips += 1
                consecutive_bad += 1
                opt.zero_grad()
                log.warning("non-finite loss on this peer (step %d): skipping the batch", opt.local_epoch)
                if consecutive_bad >= cfg.max_nonfinite:
                    raise GtExtError(f"{consecutive_bad} non-finite losses in a row on this peer: stopping it")
                continue
            loss.backward()
            if not all(torch.isfinite(p.grad).all() for p in params if p.grad is not None):
                nan_skips += 1
                consecutive_bad += 1
                opt.zero_grad()
                continue
            consecutive_bad = 0
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
                                       "peers": peers, "nan_skips": nan_skips,
                                       "elapsed_s": time.monotonic() - t0}
                window_loss = []
                if cfg.eval_every and step % cfg.eval_every == 0:
                    last_val = row["val_loss"] = _val_loss(model, val_batches)
                with open(metrics_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
                metrics.update(epoch=step, loss=row["loss"], tokens_per_s=tps, peers=peers, rounds=step,
                               nan_skips=nan_skips, val_loss=last_val)
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.max_steps:
                    _write_checkpoint(run_dir, step, model, opt, loader, cfg.keep_checkpoints)
                if bar is not None:
                    bar.update(step - bar.n)
        if bar is not None:
            bar.close()

        val_end = _val_loss(model, val_batches)
        elapsed = time.monotonic() - t0
        save_adapter(model, run_dir / "adapter")
        _write_checkpoint(run_dir, opt.local_epoch, model, opt, loader, cfg.keep_checkpoints)
        metrics.publish_now()  # last look for lost peers
        lost = sorted(metrics.lost)
        if opt.local_epoch >= cfg.max_steps:
            status = "degraded" if lost else "done"
        else:  # cut by max_time_s or a stop request: resumable from the checkpoint just written
            status = "stopped"
        info["metrics"] = {"val_loss_start": val_start, "val_loss_end": val_end, "steps": opt.local_epoch,
                           "tokens_per_s": tokens / max(elapsed, 1e-9), "local_batches": local_steps,
                           "nan_skips": nan_skips, "catch_ups": catch_ups, "lost_peers": len(lost),
                           "peers_seen": len(metrics.seen) + 1}
        info["status"] = status
        metrics.update(state="done", val_loss=val_end, epoch=opt.local_epoch)
        metrics.publish_now()
        if metrics_path.exists():
            _plot(metrics_path, run_dir / "loss.png")
        return info
    except BaseException:
        if info:
            info["status"] = "failed"
        raise
    finally:
        if info:
            atomic_write_json(run_dir / "run.json", info)
        if metrics is not None:
            metrics.stop()
        job.close()
        if opt is not None:
            try:
                opt.shutdown()
            except Exception as e:  # shutdown of a half-dead averager must not mask the real error
                log.debug("optimizer shutdown: %s", e)
        dht.shutdown()

