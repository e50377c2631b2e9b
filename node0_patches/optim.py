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
* Before the update, the averaged gradient is clipped by the norm of the WHOLE adapter: every stage
  publishes its squared norm for the step in the DHT and waits (bounded) for the others, so the
  update equals single-process `clip_grad_norm_` over all adapter parameters.
* State and gradient averagers refuse peers without the swarm key (`MemberGateMixin`), share the
  adapter state with replicas that join (node0 turns state sharing off), and a failed download tries
  the next peer instead of killing the process group.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from gt_ext.swarm.auth import MemberGateMixin, SwarmKey
from gt_ext.swarm.optim import reset_step_counts
from node0_patches import load_node0

log = logging.getLogger(__name__)


def trainable_parameters(model: Any) -> list[Any]:
    """The parameters an adapter optimizer may see (LoRA's, `requires_grad=True`)."""
    return [p for p in model.parameters() if p.requires_grad]


class NormExchange:
    """Global gradient-norm clipping across the stages of one pipeline, through the DHT.

    Each stage stores its squared gradient norm for step `epoch` under `{run}_gradnorm.{epoch}`
    (subkey = its layer span) and waits until the spans it sees cover every layer; replicas of one
    stage hold the same averaged gradient and store the same value under the same subkey."""

    def __init__(self, dht: Any, run: str, first: int, last: int, total: int, max_norm: float,
                 timeout: float = 30.0, poll_s: float = 0.02):
        self.dht, self.run, self.span = dht, run, (first, last)
        self.total, self.max_norm, self.timeout, self.poll_s = total, max_norm, timeout, poll_s

    def _covered(self, spans: list[tuple[int, int]]) -> bool:
        have = set()
        for a, b in spans:
            have.update(range(a, b))
        return have >= set(range(self.total))

    def global_norm(self, local_sq: float, epoch: int) -> float:
        """sqrt(sum of every stage's squared norm); this stage's own alone after `timeout`."""
        from hivemind.utils.timed_storage import get_dht_time

        key = f"{self.run}_gradnorm.{epoch}"
        self.dht.store(key, subkey=f"{self.span[0]}:{self.span[1]}", value=float(local_sq),
                       expiration_time=get_dht_time() + 120.0)
        deadline = time.monotonic() + self.timeout
        while True:
            found = self.dht.get(key, latest=True)
            values: dict[tuple[int, int], float] = {}
            if found is not None and isinstance(found.value, dict):
                for sub, entry in found.value.items():
                    try:
                        a, b = (int(x) for x in str(sub).split(":"))
                        values[(a, b)] = float(entry.value)
                    except (ValueError, TypeError, AttributeError):
                        continue
            if self._covered(list(values)):
                return math.sqrt(sum(values.values()))
            if time.monotonic() > deadline:
                log.warning("step %d: not every stage reported its gradient norm in %.0f s; clipping by "
                            "the norms seen (%d spans)", epoch, self.timeout, len(values))
                return math.sqrt(sum(values.values()) if values else local_sq)
            time.sleep(self.poll_s)

    def clip_(self, params: list[torch.Tensor], epoch: int) -> float:
        """Scale the gradients in place as `clip_grad_norm_(all adapter params, max_norm)` would;
        returns the global norm."""
        grads = [p.grad for p in params if p.grad is not None]
        local_sq = float(sum(float(g.detach().float().pow(2).sum()) for g in grads))
        total = self.global_norm(local_sq, epoch)
        coef = min(1.0, self.max_norm / (total + 1e-6))
        if coef < 1.0:
            for g in grads:
                g.mul_(coef)
        return total


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
            self._wake = threading.Event()
            self._norm_exchange_factory = norm_exchange
            self.norm_exchange: NormExchange | None = None
            self.last_grad_norm: float | None = None
            super().__init__(model, optimizer_lock, *args, params=trainable, **kwargs)
            # hivemind made the optimizer state with one step on zero gradients: undo its count so
            # AdamW's bias correction matches a local AdamW (gt_ext.swarm.optim).
            reset_step_counts(self.state_averager.optimizer)
            if norm_exchange is not None:
                self.norm_exchange = norm_exchange(self.dht)

        def _make_state_averager(self, **kwargs: Any) -> Any:
            # The arguments node0 passes, with the gate, and state sharing on (replicas that join
            # download the adapter and optimizer state from a live one).
            return state_cls(
                swarm_key=self._swarm_key,
                run_id=self._gate_run_id,
                dht=self.dht,
                prefix=f"{self.run_id}_state_averager",
                min_matchmaking_time=self.matchmaking_time,
                allreduce_timeout=self.allreduce_timeout,
                shutdown_timeout=self.shutdown_timeout,
                offload_optimizer=self.offload_optimizer,
                custom_gradients=self.offload_optimizer,
                status_loglevel=self.status_loglevel,
                next_chunk_timeout=self.next_chunk_timeout,
                client_mode=self.client_mode,
                auxiliary=self.auxiliary,
                allow_state_sharing=True,
                start=True,
                **kwargs,
            )

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
                self.tracker.report_local_progress(self.local_epoch, self.grad_averager.local_samples_accumulated)
                self.counters.samples.value = self.grad_averager.local_samples_accumulated
            self._wake.set()
            return finite

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
                if not self._resync_state():  # a replica behind downloads the state instead
                    c = self.scheduled_grads
                    if c is not None and (c.triggered or c.done()):
                        self.scheduled_grads = None
                    with self.optimizer_lock:
                        self._update_global_epoch(grad_scaler=None)
                    if self.model.model_args.use_compression:
                        self.model.ss_regularize()
                self.counters.peers.value = max(1, self.tracker.global_progress.num_peers)
                self.counters.samples.value = self.grad_averager.local_samples_accumulated
                self.counters.epoch.value = self.local_epoch
            log.info("stage stepped to epoch %d (%d replica(s), grad norm %s)", self.local_epoch,
                     self.counters.peers.value, self.last_grad_norm)
            if self._on_step is not None:
                self._on_step(self.local_epoch)

        def _average_gradients_and_load_into_optimizer(self, maybe_step_control: Any) -> None:
            super()._average_gradients_and_load_into_optimizer(maybe_step_control)
            if self.norm_exchange is not None:
                params = [p for g in self.state_averager.optimizer.param_groups for p in g["params"]]
                self.last_grad_norm = self.norm_exchange.clip_(params, self.local_epoch)

    return StageOptimizer
