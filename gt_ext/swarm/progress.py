"""hivemind's ProgressTracker with the two rules a swarm that starts together needs.

hivemind decides when to take a global step from its tracker: the samples all peers report in the
DHT reach the target batch, or the estimated time of that passes, or another peer is already a step
ahead. Two things make a freshly started swarm step alone (each peer on its own gradients), seen
as "Skipping pre-scheduled averaging round: there are no other peers" in the first round:

1. A peer publishes its progress record only once it has samples, and the tracker refreshes on a
   timer. Right after start-up every peer's last view is "no active peers", so a peer that fills
   the target batch on its own (or whose estimate runs out) steps alone before it has ever seen the
   others, although the swarm's own start-up barrier (`_Metrics.wait_for_peers`) saw them all.
   `hold_first_step(n, timeout)` keeps the first step back until the tracker sees `n` peers.
2. A view fetched before this peer's own record reached the DHT counts the others only, so with
   two peers `num_peers` is 1 and hivemind starts no round ("no other peers") although the other
   peer is right there. The count here includes this peer whenever it lists anyone.

Lockstep (`lockstep=True`) also drops the time estimate: a lockstep step is taken only on the whole
target batch (or when another peer already stepped), which is what makes N lockstep peers with
batch B equal one process with batch N*B.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from hivemind.optim.progress_tracker import GlobalTrainingProgress, ProgressTracker

log = logging.getLogger(__name__)


class SwarmProgressTracker(ProgressTracker):
    """`ProgressTracker` that counts itself, can hold the first step, and knows lockstep."""

    def __init__(self, *args: Any, lockstep: bool = False, **kwargs: Any):
        self.lockstep = lockstep
        self._hold: tuple[int, int, float] | None = None  # (epoch held, peers wanted, monotonic deadline)
        super().__init__(*args, **kwargs)

    def hold_first_step(self, peers: int, timeout: float) -> None:
        """Take no step from this peer's own progress until `peers` peers (this one included) report
        progress in the DHT, or `timeout` seconds pass (then it goes on with whom it sees, and says
        so). Only the step from the current epoch is held; a peer already ahead still pulls it on."""
        if peers > 1:
            self._hold = (self.local_progress.epoch, peers, time.monotonic() + timeout)

    def _held(self) -> bool:
        if self._hold is None:
            return False
        epoch, peers, deadline = self._hold
        seen = self.global_progress.num_peers
        if self.local_progress.epoch != epoch or seen >= peers:
            self._hold = None
            return False
        if time.monotonic() >= deadline:
            log.warning("first step: %d of %d peers report progress; going on without the others", seen, peers)
            self._hold = None
            return False
        return True

    @property
    def ready_by_estimate(self) -> bool:
        """hivemind's own rule: a peer ahead, the target batch reached, or its estimated time passed."""
        return ProgressTracker.ready_to_update_epoch.fget(self)

    @property
    def ready_to_update_epoch(self) -> bool:
        if self.global_epoch > self.local_progress.epoch:
            return True  # another peer stepped: join or catch up, never hold that back
        if self._held():
            return False
        if self.lockstep:
            return self.global_progress.samples_accumulated >= self.target_batch_size
        return self.ready_by_estimate

    def _parse_swarm_progress_data(self, metadata: Any) -> GlobalTrainingProgress:
        progress = super()._parse_swarm_progress_data(metadata)
        if isinstance(metadata, dict) and metadata and not self.client_mode and not self._lists_me(metadata):
            progress.num_peers += 1  # our record is on its way; its samples are counted locally
        return progress

    def _lists_me(self, metadata: dict) -> bool:
        me = self.dht.peer_id.to_bytes()
        return any(isinstance(v.value, dict) and v.value.get("peer_id") == me for v in metadata.values())
