"""Our launcher for one node0 stage server (instead of node0's `run_server.py`).

    settings = StageSettings(run="witness", model_dir=..., span=Span(0, 10, 30), cfg=train_cfg, key=key)
    serve_stage(settings, stop=threading.Event())     # blocks; `gt-ext pipeline stage` calls it

It builds node0's `Node0Server` (node0's code, imported from the checkout in $NODE0_PATH) with:

* the swarm key instead of Pluralis' auth server: the DHT takes our `SwarmAuthorizer`, every expert
  RPC goes through `StageHandler` (members only), the averagers are gated; no call to any Pluralis
  service, no speed test, no CUDA requirement, no torch-version check;
* the stage from our settings (node0 asks its auth server which stage to serve);
* node0's run-parameter store replaced by our settings (node0 reads operator-signed values from
  the DHT), node0's subspace download replaced by a local file;
* our LoRA experts, backend and optimizer (node0_patches.experts/backend/optim);
* a checkpoint of the stage's adapter and optimizer after every step in `checkpoint_dir`, loaded
  at start when no live replica has any state to download;
* an announcement of the stage (span, base-model and settings fingerprints, open generation
  sessions) every 2 s; a stage refuses to join a run whose live stages serve another base model or
  other settings;
* generation sessions (`node0_patches.inference`: per-session KV caches, serving adapters, one
  members-only stream per session) answered in this process, next to the live weights.

The names node0 looks up at call time are patched for the duration of `Node0Server.create` in
this process only (see `_node0_patches`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gt_ext.atomic import atomic_write_json
from gt_ext.errors import GtExtError
from gt_ext.pipeline.records import check_run, read_stage_records, settings_fingerprint, stage_prefix
from gt_ext.pipeline.stage import Span, model_fingerprint
from gt_ext.swarm.auth import SwarmAuthorizer, SwarmKey, publish_membership
from gt_ext.train.config import TrainConfig
from node0_patches import load_node0

log = logging.getLogger(__name__)

SCHEDULE = "gt_warmup_cosine"


@dataclass
class StageSettings:
    """Everything one stage server needs (the training part is the run's TrainConfig)."""

    run: str
    model_dir: Path
    span: Span
    cfg: TrainConfig
    key: SwarmKey | None
    initial_peers: list[str] = field(default_factory=list)
    listen: str | None = None
    checkpoint_dir: Path | None = None
    compression_rate: int | None = None
    subspace: Path | None = None
    vocab_size: int | None = None
    matchmaking_time: float = 2.0
    averaging_timeout: float = 30.0
    request_timeout: float = 3.0
    load_state_timeout: float = 60.0
    power_sgd_rank: int | None = None
    num_handlers: int = 2
    announce_period_s: float = 2.0
    keep_checkpoints: int = 2
    ready_file: Path | None = None
    inference: Any = None  # node0_patches.inference.InferenceLimits (None: the defaults)


def _warmup_cosine(optimizer: Any, num_warmup_steps: int, num_training_steps: int, min_lr_ratio: float) -> Any:
    """The single-process schedule (gt_ext.train.loop.lr_lambda) as a node0 scheduler factory."""
    from gt_ext.train.config import OptimSettings
    from gt_ext.train.loop import lr_lambda

    cfg = TrainConfig(max_steps=num_training_steps,
                      optim=OptimSettings(warmup_steps=num_warmup_steps, min_lr_ratio=min_lr_ratio))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))


def load_subspace(path: str) -> dict[str, torch.Tensor]:
    """node0's subspace components ({"rcv", "fixed_tok_weight"}) from a local file; node0 would
    download them from a URL."""
    p = Path(path)
    if not p.is_file():
        raise GtExtError(f"subspace file {p} not found (make one with `gt-ext pipeline subspace`)")
    comps = torch.load(p, map_location="cpu", weights_only=True)
    if not isinstance(comps, dict) or not {"rcv", "fixed_tok_weight"} <= set(comps):
        raise GtExtError(f"subspace file {p}: expected a dict with rcv and fixed_tok_weight")
    return comps


@contextlib.contextmanager
def _node0_patches(s: StageSettings, handler: Any, on_dht: Callable[[Any], None] | None = None) -> Iterator[None]:
    """Replace, for the duration of Node0Server.create, the names node0 and hivemind look up at
    call time: the run-parameter store, the subspace download, the module backend class, the
    connection handler class, and the DHT RPC counter (which needs node0's log level).
    `on_dht(dht)` runs where node0 reads its run parameters: its DHT is up, and no expert,
    optimizer or averager exists yet (nothing joined the run, nothing was downloaded)."""
    import hivemind.moe.server.server as hm_server
    import node0.server.node0_server as n0

    from node0_patches.backend import stage_backend_class

    o = s.cfg.optim
    params = (o.grad_accum, SCHEDULE, max(o.warmup_steps, 0), s.cfg.max_steps, s.averaging_timeout,
              s.matchmaking_time, s.request_timeout, s.load_state_timeout)
    n0.schedule_name_to_scheduler[SCHEDULE] = functools.partial(_warmup_cosine, min_lr_ratio=o.min_lr_ratio)
    saved = {(n0, "get_parameter_store"): n0.get_parameter_store,
             (n0, "load_ss_components"): n0.load_ss_components,
             (n0, "ModuleCollab"): n0.ModuleCollab,
             (n0, "patch_dht_protocol_logging"): n0.patch_dht_protocol_logging,
             (hm_server, "ConnectionHandler"): hm_server.ConnectionHandler}
    def parameter_store(dht: Any, prefix: str) -> tuple[Any, ...]:
        if on_dht is not None:
            on_dht(dht)
        return params

    n0.get_parameter_store = parameter_store
    n0.load_ss_components = load_subspace
    n0.ModuleCollab = stage_backend_class()
    n0.patch_dht_protocol_logging = lambda: None
    hm_server.ConnectionHandler = handler
    try:
        yield
    finally:
        for (mod, name), value in saved.items():
            setattr(mod, name, value)


class StageCheckpoints:
    """`checkpoint_dir/<span>/step-N/stage.pt`: LoRA weights (PEFT names), optimizer and scheduler
    state, written atomically after every step; the newest K kept."""

    def __init__(self, root: Path, span: Span, keep: int):
        self.dir = Path(root) / f"layers-{span.first}-{span.last}"
        self.keep = keep

    def all(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        found = [p for p in self.dir.glob("step-*") if (p / "stage.pt").is_file()]
        return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]))

    def save(self, step: int, expert: Any, opt: Any) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self.dir / f"step-{step}"
        tmp = Path(tempfile.mkdtemp(prefix=f".step-{step}.", dir=self.dir))
        try:
            with expert.compute_lock:  # generation may be adding a serving adapter's modules
                adapter = expert.stage.adapter_state()
            state = {"step": step, "adapter": adapter,
                     "optimizer": opt.state_averager.optimizer.state_dict(),
                     "scheduler": opt.state_averager.scheduler.state_dict() if opt.state_averager.scheduler else None}
            torch.save(state, tmp / "stage.pt")
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        for old in self.all()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def load_newest(self, expert: Any, opt: Any) -> int:
        """Load the newest checkpoint into the stage; returns its step (0 if there is none)."""
        ckpts = self.all()
        if not ckpts:
            return 0
        state = torch.load(ckpts[-1] / "stage.pt", map_location="cpu", weights_only=True)  # no pickled code
        with opt.optimizer_lock:
            expert.stage.load_adapter_state(state["adapter"])
            opt.state_averager.optimizer.load_state_dict(state["optimizer"])
            if state.get("scheduler") and opt.state_averager.scheduler is not None:
                opt.state_averager.scheduler.load_state_dict(state["scheduler"])
            step = int(state["step"])
            opt.state_averager.local_epoch = step
            opt.tracker.report_local_progress(step, 0)
            expert.counters.epoch.value = step
        log.info("resumed %s from %s", expert.span.label(), ckpts[-1])
        return step


@contextlib.contextmanager
def _bootstrap_error(s: StageSettings) -> Iterator[None]:
    """hivemind's DHT bootstrap failure as a one-line error (the usual cause: another swarm key)."""
    try:
        yield
    except RuntimeError as e:
        if "bootstrap failed" not in str(e):
            raise
        raise GtExtError(f"stage {s.span.label()}: no initial peer of run {s.run} answered "
                         f"({', '.join(s.initial_peers)}): wrong --swarm-key, or nothing listens there") from None


def _check_peers(dht: Any, run: str, me: dict[str, Any]) -> None:
    """Refuse to join a run whose live stages serve another base model or other settings."""
    for r in read_stage_records(dht, run):
        if r.peer == me["peer"]:
            continue
        for field_name, what in (("base_hash", "base model"), ("settings_hash", "training settings")):
            if getattr(r, field_name) != me[field_name]:
                raise GtExtError(f"pipeline run {run}: {r.span_label} (peer {r.peer[-8:]}) has {what} "
                                 f"{getattr(r, field_name)}, this stage {me[field_name]}: refusing to join")


def serve_stage(s: StageSettings, stop: threading.Event | None = None,
                on_ready: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Run one stage server until `stop` is set (or the process is signalled); see module docstring.
    `on_ready(info)` is called once it serves, with its uid, peer id and addresses."""
    from hivemind.proto.runtime_pb2 import CompressionType

    load_node0()
    from node0.server.node0_server import Node0Server
    from node0.utils import Node0Logger

    from gt_ext.swarm.dht import check_initial_peers, listen_maddr
    from node0_patches.experts import expert_class, register_stage_experts, stage_arguments
    from node0_patches.handler import handler_factory
    from node0_patches.inference import StageInference
    from node0_patches.monitor import stage_monitor_class
    from node0_patches.optim import NormExchange, gated_averager_classes, norm_wait_s, stage_optimizer_class

    check_run(s.run)
    stop = stop or threading.Event()
    if s.cfg.threads:
        torch.set_num_threads(s.cfg.threads)
    Node0Logger(log_level=logging.getLevelName(logging.getLogger().getEffectiveLevel()))
    register_stage_experts()
    from gt_ext.train.accel import resolve_device, resolve_dtype

    device = resolve_device(s.cfg.device)  # CUDA when there is one (device=auto), never required
    args = stage_arguments(s.model_dir, s.span, s.cfg.lora, seed=s.cfg.seed, dtype=resolve_dtype(s.cfg.dtype, device),
                           vocab_size=s.vocab_size, compression_rate=s.compression_rate, subspace=s.subspace)
    base_hash = model_fingerprint(s.model_dir)
    settings_hash = settings_fingerprint(s.cfg, s.compression_rate)
    prefix = stage_prefix(s.run, s.span.first, s.span.last)
    info = {"run": s.run, "first": s.span.first, "last": s.span.last, "total": s.span.total,
            "kind": s.span.kind, "base_hash": base_hash, "settings_hash": settings_hash,
            "compression_rate": s.compression_rate}
    o = s.cfg.optim
    grads = gated_averager_classes()["powersgd" if s.power_sgd_rank else "grad"]
    grad_factory = functools.partial(grads, swarm_key=s.key, run_id=s.run,
                                     **({"averager_rank": s.power_sgd_rank} if s.power_sgd_rank else {}))
    checkpoints = StageCheckpoints(s.checkpoint_dir, s.span, s.keep_checkpoints) if s.checkpoint_dir else None
    holder: dict[str, Any] = {}

    def on_step(epoch: int) -> None:
        if checkpoints is not None and "expert" in holder:
            checkpoints.save(epoch, holder["expert"], holder["opt"])

    def norm_exchange(dht: Any) -> NormExchange | None:
        if o.grad_clip <= 0:
            return None
        return NormExchange(dht, s.run, s.span.first, s.span.last, s.span.total, o.grad_clip,
                            timeout=norm_wait_s(s.averaging_timeout, s.matchmaking_time))

    def restore(opt: Any) -> int:
        return checkpoints.load_newest(opt.model, opt) if checkpoints is not None else 0

    optim_cls = functools.partial(
        stage_optimizer_class(), swarm_key=s.key, gate_run_id=s.run, norm_exchange=norm_exchange, on_step=on_step,
        restore=restore,
        # The target batch is a handful of micro-batches: refresh progress often, forget a dead
        # replica's progress within seconds.
        tracker_opts=dict(min_refresh_period=0.1, max_refresh_period=0.5, default_refresh_period=0.2,
                          metadata_expiration=10.0),
    )
    monitor_cls = stage_monitor_class()
    handler = handler_factory(s.key, s.run, info)
    def refuse_foreign_run(dht: Any) -> None:
        # Before node0 builds the expert and its averagers: a stage of another base model or other
        # settings must not download the run's state or take part in its averaging rounds.
        try:
            _check_peers(dht, s.run, {**info, "peer": dht.peer_id.to_base58()})
        except GtExtError:
            dht.shutdown()
            raise

    with _node0_patches(s, handler, on_dht=refuse_foreign_run), _bootstrap_error(s):
        server = Node0Server.create(
            num_experts=1,
            expert_pattern=f"{prefix}.0.[0:1000000]",
            expert_cls=expert_class(s.span),
            model_conf=args,
            optim_cls=functools.partial(torch.optim.AdamW, lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                        weight_decay=o.weight_decay),
            grad_avg_factory=grad_factory,
            optim_collab_cls=optim_cls,
            num_handlers=s.num_handlers,
            device=str(device),
            initial_peers=check_initial_peers(s.initial_peers),
            compression=CompressionType.NONE,
            stats_report_interval=None,
            update_period=s.announce_period_s,
            # Replicas average exact gradients every step and stay equal; a replica that missed a
            # round downloads the state instead. No extra parameter-averaging rounds.
            average_state_every=1 << 30,
            expiration=3 * s.announce_period_s,
            monitor=None,
            start=True,
            # forwarded to hivemind's DHT: the swarm key, loopback unless told, no public infrastructure
            host_maddrs=[listen_maddr(s.listen)],
            authorizer=SwarmAuthorizer(s.key, username="stage") if s.key else None,
            use_ipfs=False,
            use_relay=False,
            nat_port_map=False,
        )
    monitor = None
    inference = None
    try:
        uid, backend = next(iter(server.module_backends.items()))
        expert, opt = backend.module, backend.optimizer
        holder.update(expert=expert, opt=opt)
        dht = server.dht
        if s.key is not None:
            publish_membership(dht, s.run, s.key)
        me = {**info, "peer": dht.peer_id.to_base58(), "uid": uid}
        _check_peers(dht, s.run, me)
        # Generation sessions, answered in this process next to the live weights.
        inference = StageInference(expert, uid, dht, s.key, s.run, s.inference,
                                   optimizer_lock=backend.optimizer_lock)
        inference.start()

        def record() -> dict[str, Any]:
            c = expert.counters.snapshot()
            return {**me, "epoch": opt.local_epoch, "state": "running", "samples": c["samples"],
                    "peers": c["peers"], "nan_skips": c["nan_skips"], "tokens": c["tokens"], **inference.stats(),
                    "maddrs": [str(a) for a in dht.get_visible_maddrs()]}

        last_membership = [time.monotonic()]

        def refresh_membership() -> None:
            if s.key is not None and time.monotonic() - last_membership[0] > 30:
                publish_membership(dht, s.run, s.key)
                last_membership[0] = time.monotonic()

        monitor = monitor_cls(s.run, record, s.announce_period_s, extra=refresh_membership)
        monitor.connect_dht(dht)
        monitor.publish()
        monitor.start()
        addrs = [str(a) for a in dht.get_visible_maddrs()]
        log.info("stage %s of run %s serving %s as %s on %s", s.span.label(), s.run, s.model_dir, uid, " ".join(addrs))
        ready = {"uid": uid, "peer": me["peer"], "addrs": addrs, "pid": os.getpid(), **info}
        if s.ready_file is not None:
            atomic_write_json(s.ready_file, ready)
        if on_ready is not None:
            on_ready(ready)
        while not stop.wait(0.5):
            if not server.is_alive():
                raise GtExtError(f"stage {s.span.label()}: the node0 server stopped")
    finally:
        # Generation first, then the optimizer (its tracker and averagers talk through the DHT),
        # then the server.
        if monitor is not None:
            monitor.stop_event.set()
        if inference is not None:
            _bounded(inference.shutdown, 10.0, "inference shutdown")
        opt = holder.get("opt")
        if opt is not None:
            opt.stop_monitoring()
            _bounded(opt.shutdown, 15.0, "optimizer shutdown")
        _bounded(server.shutdown, 15.0, "node0 server shutdown")


def _bounded(fn: Callable[[], Any], timeout: float, what: str) -> None:
    """Run `fn` in a daemon thread for at most `timeout` s (hivemind's server shutdown can block on
    a task pool; the stage CLI then ends the remaining processes itself)."""
    def run() -> None:
        with contextlib.suppress(Exception):
            fn()

    t = threading.Thread(target=run, name=what, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        log.warning("%s did not finish in %.0f s", what, timeout)
