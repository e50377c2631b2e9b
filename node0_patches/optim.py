"""node0's `AutoStepOptimizer` for LoRA stages: adapters only, steps on accumulated micro-batches,
non-finite gradients skipped, global gradient clipping across stages, averagers gated by the swarm key.

What changes against node0's optimizer, and why:

* It optimizes and averages only trainable (LoRA) parameters; the frozen base never goes on the wire.
* `accumulate()` (called by the backend after every backward) only accumulates. The optimizer's own
  thread takes the global step as soon as the stage's replicas together hold the target number of
  micro-batches (hivemind's progress tracker), not after node0's 3-second idle timer, and a replica
  that received none of them joins the same round. The trainer sends the next step's micro-batches
  only after every stage has stepped.
* A non-finite gradient drops that micro-batch (logged, counted, accumulated as zero so the count
  of micro-batches stays right) instead of node0's `os.killpg`.
* The trainer sends all of a step's micro-batches to one replica per span: that replica steps on
  its own gradients (the exact update, whatever node0's matchmaking does: it forms a group with
  whoever joined within `matchmaking_time`, so a replica a moment late would average alone), and
  the replicas that received none download its state instead of stepping on a zero gradient.
  Micro-batches split over replicas (after a failover) are averaged in a round weighted by counts;
  replicas count as live when announced and answering a DHT ping (an announcement outlives a
  killed replica by seconds).
* Before the update, the averaged gradient is clipped by the norm of the WHOLE adapter: every stage
  publishes its gradients' norms for the step in the DHT and waits (bounded) for the others, so the
  update equals single-process `clip_grad_norm_` over all adapter parameters. node0's own fixed
  per-stage clipping (0.18) is switched off.
* State and gradient averagers refuse peers without the swarm key (`MemberGateMixin`), share the
  adapter state with replicas that join (node0 turns state sharing off), and a failed download tries
  the next peer instead of killing the process group.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from gt_ext.swarm.auth import MemberGateMixin, SwarmKey
from gt_ext.swarm.optim import reset_step_counts, state_averager_kwargs
from node0_patches import load_node0

log = logging.getLogger(__name__)


def trainable_parameters(model: Any) -> list[Any]:
    """The parameters an adapter optimizer may see (LoRA's, `requires_grad=True`)."""
    return [p for p in model.parameters() if p.requires_grad]


def norm_wait_s(averaging_timeout: float, matchmaking_time: float) -> float:
    """How long a stage waits for the other stages' gradient norms: an averaging round that finds
    no group ends after `averaging_timeout` (then the stage steps on its local gradients), one that
    found its group has `averaging_timeout` for the all-reduce, after a matchmaking window."""
    return 2 * averaging_timeout + matchmaking_time + 10.0


class NormExchange:
    """Global gradient-norm clipping across the stages of one pipeline, through the DHT.

    Each stage stores the norms of its parameters' gradients (float32, in parameter order) for step
    `epoch` under `{run}_gradnorm.{epoch}` (subkey: its layer span) and waits until the spans it
    sees cover every layer. The norms of all spans, in layer order, are the per-parameter norms a
    single process would see, in its order, so the total norm and the clipping are computed by
    torch's own `get_total_norm` / `clip_grads_with_norm_` exactly as `clip_grad_norm_` does.
    Replicas of a stage hold the same averaged gradient and store the same value.

    `timeout` must exceed the longest time another stage can legitimately take from its last
    micro-batch to its clipping (`norm_wait_s`): a stage whose averaging round fails (a replica
    killed mid-step) only clips after `averaging_timeout`, and clipping without its norms would
    silently give every other stage a different update than one process would."""

    def __init__(self, dht: Any, run: str, first: int, last: int, total: int, max_norm: float,
                 timeout: float = 30.0, poll_s: float = 0.02):
        self.dht, self.run, self.span = dht, run, (first, last)
        self.total, self.max_norm, self.timeout, self.poll_s = total, max_norm, timeout, poll_s

    def _covered(self, spans: list[tuple[int, int]]) -> bool:
        have = set()
        for a, b in spans:
            have.update(range(a, b))
        return have >= set(range(self.total))

    def all_norms(self, local: list[float], epoch: int) -> list[float]:
        """Every stage's per-parameter gradient norms, in layer order; this stage's alone (with a
        warning) if the others have not reported within `timeout`."""
        from hivemind.utils.timed_storage import get_dht_time

        key = f"{self.run}_gradnorm.{epoch}"
        self.dht.store(key, subkey=f"{self.span[0]}:{self.span[1]}", value=list(local),
                       expiration_time=get_dht_time() + 120.0)
        deadline = time.monotonic() + self.timeout
        while True:
            found = self.dht.get(key, latest=True)
            spans: dict[tuple[int, int], list[float]] = {}
            if found is not None and isinstance(found.value, dict):
                for sub, entry in found.value.items():
                    try:
                        a, b = (int(x) for x in str(sub).split(":"))
                        spans[(a, b)] = [float(v) for v in entry.value]
                    except (ValueError, TypeError, AttributeError):
                        continue
            if self._covered(list(spans)):
                return [v for k in sorted(spans) for v in spans[k]]
            if time.monotonic() > deadline:
                log.warning("step %d: not every stage reported its gradient norms in %.0f s; clipping by "
                            "the norms seen (%d spans)", epoch, self.timeout, len(spans))
                return [v for k in sorted(spans) for v in spans[k]] if spans else list(local)
            time.sleep(self.poll_s)

    def clip_(self, params: list[torch.Tensor], epoch: int) -> float:
        """Clip the gradients in place as `clip_grad_norm_(all adapter params, max_norm)`; returns
        the global norm."""
        grads = [p.grad for p in params if p.grad is not None]
        local = [float(n) for n in torch._foreach_norm(grads, 2.0)] if grads else []
        norms = [torch.tensor(v, dtype=torch.float32) for v in self.all_norms(local, epoch)]
        total = torch.nn.utils.get_total_norm(norms, 2.0)
        torch.nn.utils.clip_grads_with_norm_(params, self.max_norm, total)
        return float(total)


def answering_peers(dht: Any, peers: list[str], attempts: int = 2) -> set[str]:
    """The peers (base58 ids) that answer a DHT ping, each asked up to `attempts` times (a live but
    busy peer is not dropped for one late answer; a killed one refuses the connection at once)."""
    return set(dht.run_coroutine(functools.partial(_ping_peers, list(peers), attempts)))


async def _ping_peers(peers: list[str], attempts: int, dht: Any, node: Any) -> list[str]:
    import asyncio

    from hivemind.p2p import PeerID

    async def answers(peer: str) -> bool:
        for _ in range(attempts):
            if await node.protocol.call_ping(PeerID.from_base58(peer)) is not None:
                return True
        return False

    found = await asyncio.gather(*(answers(p) for p in peers))
    return [p for p, ok in zip(peers, found, strict=True) if ok]


@functools.cache
def gated_averager_classes() -> dict[str, type]:
    """node0's averagers with the swarm-key gate: {"state", "grad", "powersgd"}."""
    load_node0()
    from node0.server.HM_averager import DecentralizedAverager
    from node0.server.HM_gradient_averager import GradientAverager
    from node0.server.power_sgd_averager import PowerSGDGradientAverager
    from node0.server.state_averager_wrap import TrainingStateAverager

    class GatedStageStateAverager(MemberGateMixin, TrainingStateAverager):
        """Adapter + optimizer state of a stage: averaged and shared with key holders only."""

        # node0's wrapper kills the process group when a download fails; a killed replica is a
        # normal event here, so use the plain download loop, which tries the next peer.
        _load_state_from_peers = DecentralizedAverager._load_state_from_peers

        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            # node0 clips every stage's gradient to a fixed norm (0.18, or 0.88 for a stage named
            # "tail") right before the optimizer step; the stage optimizer has already clipped by
            # the norm of the whole adapter (NormExchange), as `gt-ext train` does.
            self.clip_val = float("inf")

    class GatedStageGradAverager(MemberGateMixin, GradientAverager):
        """LoRA gradients of a stage's replicas, averaged with key holders only."""

    class GatedStagePowerSGDAverager(MemberGateMixin, PowerSGDGradientAverager):
        """Low-rank (PowerSGD) LoRA gradient averaging, gated the same way."""

    return {"state": GatedStageStateAverager, "grad": GatedStageGradAverager,
            "powersgd": GatedStagePowerSGDAverager}


@functools.cache
def stage_optimizer_class() -> type:
    """Subclass of node0's `AutoStepOptimizer` for LoRA stages (see module docstring)."""
    load_node0()
    from node0.server.optim import AutoStepOptimizer

    state_cls = gated_averager_classes()["state"]

    class StageOptimizer(AutoStepOptimizer):
        def __init__(
            self,
            model: Any,
            optimizer_lock: Any,
            *args: Any,
            params: Any = None,
            swarm_key: SwarmKey | None = None,
            gate_run_id: str = "",
            norm_exchange: Callable[[Any], NormExchange] | None = None,
            on_step: Callable[[int], None] | None = None,
            restore: Callable[[Any], int] | None = None,
            **kwargs: Any,
        ):
            flat = params if params is not None else list(model.parameters())
            if flat and isinstance(flat[0], dict):  # param groups
                flat = [p for g in flat for p in g["params"]]
            trainable = [p for p in flat if p.requires_grad]
            if not trainable:
                raise ValueError("model has no trainable parameters (add LoRA adapters first)")
            # Read by _make_state_averager during super().__init__.
            self._swarm_key, self._gate_run_id = swarm_key, gate_run_id
            self.counters = model.counters
            self._on_step = on_step
            self._restore = restore
            self._wake = threading.Event()
            self._norm_exchange_factory = norm_exchange
            self.norm_exchange: NormExchange | None = None
            self.last_grad_norm: float | None = None
            self._waiting_for = -1  # the epoch this (idle) replica last waited to download
            super().__init__(model, optimizer_lock, *args, params=trainable, **kwargs)
            # hivemind made the optimizer state with one step on zero gradients: undo its count so
            # AdamW's bias correction matches a local AdamW (gt_ext.swarm.optim).
            reset_step_counts(self.state_averager.optimizer)
            if norm_exchange is not None:
                self.norm_exchange = norm_exchange(self.dht)

        def _make_state_averager(self, **kwargs: Any) -> Any:
            # The arguments node0 passes, with the gate, and state sharing on (replicas that join
            # download the adapter and optimizer state from a live one).
            return state_cls(swarm_key=self._swarm_key, run_id=self._gate_run_id, allow_state_sharing=True,
                             **state_averager_kwargs(self), **kwargs)

        def load_state_from_peers(self, wait_for_end_round: bool = False, **kwargs: Any) -> None:
            """node0's join (download the state from a live replica); when no replica has any,
            the stage's own newest checkpoint (`restore`). node0 calls this before the optimizer's
            thread starts, so nothing steps in between."""
            super().load_state_from_peers(wait_for_end_round=wait_for_end_round, **kwargs)
            if self.local_epoch == 0 and self._restore is not None:
                self._restore(self)
            self.counters.epoch.value = self.local_epoch

        # -- accumulating ---------------------------------------------------------------------------
        def accumulate(self, batch_size: int = 1) -> bool:
            """Add the gradients now in .grad (one micro-batch) to this step's accumulators; False
            when any of them is not finite (the micro-batch then counts with a zero gradient)."""
            finite = True
            with self._step_lock, self.optimizer_lock:  # the step thread takes them in this order too
                if self.grad_averager.has_nan_grads():
                    # Counted with a zero gradient: the micro-batch contributes nothing, and the
                    # stage's count of micro-batches stays equal to the trainer's.
                    log.warning("non-finite gradient at step %d: micro-batch skipped (the stage goes on)",
                                self.local_epoch)
                    for p in self.model.parameters():
                        if p.requires_grad and p.grad is not None:
                            p.grad.zero_()
                    finite = False
                self.grad_averager.accumulate_grads_(batch_size)
                self._clear_grads()  # the next backward starts from zero
                self.tracker.report_local_progress(self.local_epoch, self.grad_averager.local_samples_accumulated)
                self.counters.samples.value = self.grad_averager.local_samples_accumulated
            self._wake.set()
            return finite

        def _clear_grads(self) -> None:
            for p in self.model.parameters():
                p.grad = None

        def zero_grad(self, set_to_none: bool = True) -> None:
            """Gradients are cleared under the locks by `accumulate` and after each step."""

        def step(self, batch_size: int | None = None) -> None:
            """node0 calls this after each backward; here that is `accumulate` (the step is taken
            by the optimizer's thread when the stage holds the target batch)."""
            self.accumulate(batch_size or 1)

        # -- stepping ---------------------------------------------------------------------------------
        def _monitor_step(self) -> None:
            """Take the global step once the stage's replicas hold the target number of micro-batches
            (or another replica already stepped); handle trainers' reset requests."""
            while not self._should_stop.is_set():
                self._wake.wait(0.05)
                self._wake.clear()
                try:
                    self._handle_reset()
                    # node0's rule (samples or a peer's epoch), not hivemind's, which also fires
                    # on an estimated time and would step on a partial batch.
                    if self.ready_to_update_epoch:
                        self._global_step()
                except Exception as e:  # a failed round must not stop the stage
                    log.exception("step failed: %s", e)

        def _handle_reset(self) -> None:
            c = self.counters
            want = c.reset_requests.value
            if want == c.reset_done.value:
                return
            with self._step_lock, self.optimizer_lock:
                self.grad_averager.reset_accumulated_grads_()
                self.tracker.report_local_progress(self.local_epoch, 0)
                c.samples.value = 0
            c.reset_done.value = want
            log.info("dropped the accumulated gradients of an interrupted step (epoch %d)", self.local_epoch)

        def _global_step(self) -> None:
            with self._step_lock:
                if not self.ready_to_update_epoch:
                    return
                t = self.tracker
                if self.grad_averager.local_samples_accumulated == 0 and t.global_epoch <= self.local_epoch:
                    # The step's micro-batches went to another replica: it steps, and this one
                    # downloads its state once it has (`_resync_state`, on a later pass). It never
                    # steps on a zero gradient, and never waits for an averaging round.
                    if self._waiting_for != self.local_epoch:
                        self._waiting_for = self.local_epoch
                        log.info("step %d: no micro-batch here; taking the step from the replica that has them",
                                 self.local_epoch)
                    return
                log.info("step %d: %d of %d micro-batches (%d here), global step %d", self.local_epoch,
                         t.global_progress.samples_accumulated, t.target_batch_size,
                         self.grad_averager.local_samples_accumulated, t.global_epoch)
                if not self._resync_state():  # a replica behind downloads the state instead
                    c = self.scheduled_grads
                    if c is not None and (c.triggered or c.done()):
                        self.scheduled_grads = None
                    with self.optimizer_lock:
                        self._update_global_epoch(grad_scaler=None)
                        self._clear_grads()
                        if self.model.model_args.use_compression:
                            self.model.ss_regularize()
                self.counters.samples.value = self.grad_averager.local_samples_accumulated
                self.counters.epoch.value = self.local_epoch
            log.info("stage stepped to epoch %d (%d replica(s), grad norm %s)", self.local_epoch,
                     self.counters.peers.value, self.last_grad_norm)
            if self._on_step is not None:
                self._on_step(self.local_epoch)

        def live_replicas(self) -> int:
            """Replicas of this stage's span that are announced in the run AND answer a DHT ping
            (this one included). An announcement outlives a killed replica by a few seconds; a
            round that counted it would wait `averaging_timeout` for a peer that never comes."""
            from gt_ext.pipeline.records import read_stage_records

            span = self.model.span
            me = self.dht.peer_id.to_base58()
            try:
                found = read_stage_records(self.dht, self._gate_run_id)
                others = sorted({r.peer for r in found if (r.first, r.last) == (span.first, span.last)} - {me})
                alive = answering_peers(self.dht, others) if others else set()
            except Exception as e:  # the DHT is shutting down
                log.debug("reading stage records: %s", e)
                return 1
            if len(alive) < len(others):
                log.info("%d announced replica(s) of %s do not answer: averaging without them",
                         len(others) - len(alive), span.label())
            return 1 + len(alive)

        def _begin_averaging_gradients(self, grad_scaler: Any) -> bool:
            # Replicas are known from the stages' announcements (hivemind's progress tracker
            # does not list a replica that got no micro-batch). A replica that holds all of the
            # step's micro-batches (the trainer sends a step to one replica per span) steps on
            # them: that IS the average, and no averaging round (node0's matchmaking forms a group
            # with whoever joined within `matchmaking_time`) can make it wrong; the others download
            # its state. Only micro-batches split over replicas are averaged, each weighted by its
            # count (hivemind's fallback to local gradients if the round fails).
            self.counters.peers.value = n = self.live_replicas()
            local, target = self.grad_averager.local_samples_accumulated, self.tracker.target_batch_size
            if n > 1 and local < target:
                c = self.scheduled_grads
                if c is not None and (c.triggered or c.done()):
                    self.scheduled_grads = None
                try:
                    # Accumulators are kept until the step ends (hivemind resets them then): if the
                    # round fails, the fallback to local gradients still has them. The search is
                    # bounded (hivemind's default deadline is infinite).
                    self.scheduled_grads = self.grad_averager.step(
                        control=self.scheduled_grads, reset_accumulators=False, wait=False,
                        timeout=self.averaging_timeout)
                    return True
                except Exception as e:
                    log.warning("could not start averaging with the other replicas: %s", e)
            # hivemind would leave the accumulated gradients in its averager and step on whatever is
            # in .grad; load them, divided by the number of micro-batches, as its own fallback does.
            self._load_local_gradients_into_optimizer()
            self._clip_loaded_gradients()
            return False

        def _average_gradients_and_load_into_optimizer(self, maybe_step_control: Any) -> None:
            super()._average_gradients_and_load_into_optimizer(maybe_step_control)
            self._clip_loaded_gradients()

        def _clip_loaded_gradients(self) -> None:
            if self.norm_exchange is not None:
                params = [p for g in self.state_averager.optimizer.param_groups for p in g["params"]]
                self.last_grad_norm = self.norm_exchange.clip_(params, self.local_epoch)

    return StageOptimizer
