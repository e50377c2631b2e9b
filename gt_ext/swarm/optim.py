"""hivemind.Optimizer over LoRA parameters only, with the swarm-key gate on every averager.

    opt = make_optimizer(dht, lora_params, run_id, target_batch_size, batch_size, lr_lambda, ...)
    opt.step(batch_size=rows)          # accumulate; averages + steps when the swarm reaches the target
    opt.finish_epoch(timeout)          # lockstep mode: wait for the swarm, then take the global step
    opt.tracker.hold_first_step(n, t)  # a swarm that starts together: no first step alone

Only the parameters passed in (the adapter's, `requires_grad=True`) are averaged: the frozen base
model never goes on the wire. Gradients are averaged with weights = samples each peer accumulated,
so a round is the mean over the whole target batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
from hivemind.optim.grad_averager import GradientAverager
from hivemind.optim.optimizer import Optimizer
from hivemind.optim.power_sgd_averager import PowerSGDGradientAverager
from hivemind.optim.state_averager import TrainingStateAverager

from gt_ext.swarm.auth import MemberGateMixin, SwarmKey
from gt_ext.swarm.progress import SwarmProgressTracker

log = logging.getLogger(__name__)


class GatedStateAverager(MemberGateMixin, TrainingStateAverager):
    """Parameter/optimizer-state averager that serves and averages only with key holders."""


class GatedGradientAverager(MemberGateMixin, GradientAverager):
    """Gradient averager that accepts gradient parts only from key holders."""


class GatedPowerSGDAverager(MemberGateMixin, PowerSGDGradientAverager):
    """PowerSGD (low-rank) gradient averager, gated like `GatedGradientAverager`."""


def state_averager_kwargs(opt: Optimizer) -> dict[str, Any]:
    """The arguments a hivemind `Optimizer` gives its TrainingStateAverager (hivemind 1.1.12's
    `_make_state_averager`), for subclasses that build a gated one (here and in node0_patches.optim)."""
    return dict(
        dht=opt.dht,
        prefix=f"{opt.run_id}_state_averager",
        min_matchmaking_time=opt.matchmaking_time,
        allreduce_timeout=opt.allreduce_timeout,
        shutdown_timeout=opt.shutdown_timeout,
        offload_optimizer=opt.offload_optimizer,
        custom_gradients=opt.offload_optimizer,
        status_loglevel=opt.status_loglevel,
        next_chunk_timeout=opt.next_chunk_timeout,
        client_mode=opt.client_mode,
        auxiliary=opt.auxiliary,
        start=True,
    )


class SwarmOptimizer(Optimizer):
    """`hivemind.Optimizer` whose averagers check the swarm key, whose tracker is a
    `SwarmProgressTracker`, plus a lockstep `finish_epoch`."""

    tracker: SwarmProgressTracker

    def __init__(self, *, swarm_key: SwarmKey | None, lockstep: bool = False, **kwargs: Any):
        self._swarm_key = swarm_key  # read by _make_state_averager during super().__init__
        self._lockstep = lockstep
        super().__init__(**kwargs)

    def _maybe_schedule_gradient_averaging(self) -> None:
        # hivemind pre-schedules the next gradient round from its ETA estimate; in lockstep the
        # peers wait for each other instead, and a pre-scheduled group has often expired by then
        # (the round is then skipped and each peer steps on its own gradients). Lockstep starts
        # matchmaking when the whole batch is there, so all peers look for the group together.
        if not self._lockstep:
            super()._maybe_schedule_gradient_averaging()
            return
        self._drop_used_grad_control()

    # A step on this peer's gradients alone is logged by hivemind only at its status level. Count
    # it and warn: the step then saw less than the target batch, and in lockstep it breaks
    # "N peers with batch B take the steps of one process with batch N*B".
    local_rounds: int = 0

    def _begin_averaging_gradients(self, grad_scaler: Any) -> bool:
        mine = self.tracker.local_progress.samples_accumulated  # read before the round resets it
        began = super()._begin_averaging_gradients(grad_scaler)
        peers = self.tracker.global_progress.num_peers
        if not began and peers > 1:
            self._note_local_round(f"no round started although {peers} peers report progress")
        elif not began and mine < self.target_batch_size:
            self._note_local_round(f"no other peer seen; {mine} of {self.target_batch_size} samples")
        return began

    def _average_gradients_and_load_into_optimizer(self, maybe_step_control: Any) -> None:
        super()._average_gradients_and_load_into_optimizer(maybe_step_control)
        c = maybe_step_control  # hivemind fell back to local gradients unless the round finished well
        if c is None:
            return
        if not c.done():
            self._note_local_round(f"no group within {self.averaging_timeout:.0f} s")
        elif c.cancelled():
            self._note_local_round("the round was cancelled")
        elif c.exception() is not None:
            self._note_local_round(f"the round failed: {type(c.exception()).__name__}")

    state_loads: int = 0  # times this peer dropped its progress and loaded the swarm's state

    def load_state_from_peers(self, **kwargs: Any) -> Any:
        self.state_loads += 1
        log.info("loading the swarm's state from a peer (this peer was at step %d)", self.local_epoch)
        return super().load_state_from_peers(**kwargs)

    def _note_local_round(self, why: str) -> None:
        self.local_rounds += 1
        log.warning("step %d used this peer's gradients only (%s)", self.local_epoch + 1, why)

    def _drop_used_grad_control(self) -> None:
        # hivemind keeps the last round's (finished) control in `scheduled_grads`; left there, the
        # next round sees a used control and silently falls back to local gradients.
        c = self.scheduled_grads
        if c is not None and (c.triggered or c.done()):
            self.scheduled_grads = None

    def _make_progress_tracker(self, target_batch_size: int, **kwargs: Any) -> SwarmProgressTracker:
        # Same arguments as hivemind 1.1.12's own, plus the lockstep rule.
        return SwarmProgressTracker(dht=self.dht, prefix=self.run_id, target_batch_size=target_batch_size,
                                    client_mode=self.client_mode, status_loglevel=self.status_loglevel,
                                    start=True, lockstep=self._lockstep, **kwargs)

    def _make_state_averager(self, **kwargs: Any) -> TrainingStateAverager:
        # Same arguments hivemind passes to its own TrainingStateAverager, plus the gate.
        return GatedStateAverager(swarm_key=self._swarm_key, run_id=self.run_id,
                                  **state_averager_kwargs(self), **kwargs)

    def finish_epoch(self, timeout: float, poll_s: float = 0.05) -> bool:
        """Lockstep: after this peer's share of the batch, wait until the swarm has accumulated the
        whole target batch (or another peer already stepped) and take the global step now.

        The lockstep tracker never steps on hivemind's time estimate: that is what makes N lockstep
        peers with batch B equal to one process with batch N*B. After `timeout` it falls back to
        hivemind's own rule (the straggler is left behind) and returns False."""
        start_epoch = self.local_epoch
        deadline = time.monotonic() + timeout
        while True:
            if self.local_epoch > start_epoch:
                return True
            timed_out = time.monotonic() >= deadline
            if self.tracker.ready_to_update_epoch or (timed_out and self.tracker.ready_by_estimate):
                # A peer that is behind joins the round or catches up, as in hivemind's `step`.
                self._drop_used_grad_control()
                self._update_global_epoch(grad_scaler=None)
                return not timed_out
            if timed_out:
                return False
            time.sleep(poll_s)

def make_optimizer(
    dht: Any,
    params: Sequence[torch.nn.Parameter],
    run_id: str,
    target_batch_size: int,
    batch_size: int,
    lr: float,
    lr_lambda: Callable[[int], float] | None = None,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    matchmaking_time: float = 5.0,
    averaging_timeout: float = 60.0,
    power_sgd_rank: int | None = None,
    swarm_key: SwarmKey | None = None,
    average_state_every: int = 1,
    lockstep: bool = False,
    group_size: int | None = None,
) -> SwarmOptimizer:
    """A `SwarmOptimizer` (AdamW inside) over `params`; `lr_lambda(epoch)` scales the LR per global step."""
    if power_sgd_rank:
        grad_factory = partial(GatedPowerSGDAverager, averager_rank=power_sgd_rank, swarm_key=swarm_key, run_id=run_id)
    else:
        grad_factory = partial(GatedGradientAverager, swarm_key=swarm_key, run_id=run_id)
    scheduler = (lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)) if lr_lambda else None
    opt = SwarmOptimizer(
        swarm_key=swarm_key,
        lockstep=lockstep,
        dht=dht,
        run_id=run_id,
        target_batch_size=target_batch_size,
        batch_size_per_step=batch_size,
        params=list(params),
        optimizer=partial(torch.optim.AdamW, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay),
        scheduler=scheduler,
        matchmaking_time=matchmaking_time,
        averaging_timeout=averaging_timeout,
        grad_averager_factory=grad_factory,
        average_state_every=average_state_every,
        # With a known group size, a round starts as soon as the group is full instead of waiting
        # out the whole matchmaking time (a dead peer only brings back the wait).
        averager_opts=dict(target_group_size=group_size, request_timeout=min(3.0, matchmaking_time / 2)),
        # Progress records must outlive a slow step on a busy machine, but a dead peer should drop
        # out of the target-batch count within a few rounds.
        tracker_opts=dict(min_refresh_period=0.2, max_refresh_period=2.0, default_refresh_period=1.0,
                          metadata_expiration=20.0),
        verbose=log.isEnabledFor(logging.INFO),  # hivemind then logs each round at INFO
    )
    reset_step_counts(opt.opt)
    return opt


def reset_step_counts(inner: torch.optim.Optimizer) -> None:
    """Undo the step count of hivemind's virtual zero-gradient step.

    hivemind creates the optimizer state with one `step()` on zero gradients (so the state can be
    shared at once). Parameters and Adam moments stay zero-updated, but Adam's `step` becomes 1,
    which changes the bias correction of every later update: the first real update would be
    ~0.74 lr instead of lr. Resetting it makes the swarm's AdamW the same as a local AdamW.
    """
    for state in inner.state.values():
        step = state.get("step")
        if isinstance(step, torch.Tensor):
            step.zero_()
        elif step is not None:
            state["step"] = 0


def bytes_per_round(params: Sequence[torch.Tensor], n_peers: int, power_sgd_rank: int | None = None,
                    min_compression_ratio: float = 0.5, bytes_per_value: int = 4) -> int:
    """Bytes one peer sends in one butterfly all-reduce round of these tensors' gradients.

    In hivemind's all-reduce each peer owns 1/n of the vector: it sends (n-1)/n of its own vector
    out and sends its averaged part back to the n-1 others, so 2 * (n-1)/n * size per peer. With
    PowerSGD a matrix [m, k] (flattened to 2-D as hivemind does) costs (m + k) * rank values in two
    phases (P then Q) instead of m * k, unless compression would save less than
    `min_compression_ratio` (hivemind then sends it uncompressed).
    """
    from hivemind.optim.power_sgd_averager import get_flatten_greedy_dims

    values = 0
    for p in params:
        if power_sgd_rank and p.ndim > 1:
            m, k = get_flatten_greedy_dims(p)
            if 1 - power_sgd_rank * (m + k) / p.numel() >= min_compression_ratio:
                values += power_sgd_rank * (m + k)
                continue
        values += p.numel()
    share = 2 * (n_peers - 1) / n_peers if n_peers > 1 else 0.0
    return int(values * bytes_per_value * share)
