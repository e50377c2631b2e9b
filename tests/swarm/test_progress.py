"""SwarmProgressTracker on a real hivemind DHT (127.0.0.1, in this process): when a peer may step."""

from __future__ import annotations

import time

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
def dht():
    from gt_ext.swarm.dht import start_dht

    d = start_dht()
    yield d
    d.shutdown()


def _tracker(dht, lockstep: bool = False):
    from gt_ext.swarm.progress import SwarmProgressTracker

    # start=False: no background fetcher; the test sets the swarm view itself.
    return SwarmProgressTracker(dht=dht, prefix="gt-progress-test", target_batch_size=8, start=False,
                                lockstep=lockstep)


def _records(dht, *peers: tuple[bytes, int, int]) -> dict:
    """A progress listing as the DHT returns it: subkey -> ValueWithExpiration(record)."""
    from hivemind.optim.progress_tracker import LocalTrainingProgress
    from hivemind.utils import ValueWithExpiration, get_dht_time

    now = get_dht_time()
    return {f"k{i}".encode(): ValueWithExpiration(LocalTrainingProgress(
        peer_id=pid, epoch=epoch, samples_accumulated=samples, samples_per_second=1.0, time=now,
        client_mode=False).dict(), now + 60) for i, (pid, epoch, samples) in enumerate(peers)}


def test_a_view_without_this_peers_record_still_counts_this_peer(dht):
    t = _tracker(dht)
    me, other = dht.peer_id.to_bytes(), b"other-peer"
    assert t._parse_swarm_progress_data(_records(dht, (other, 0, 4))).num_peers == 2
    assert t._parse_swarm_progress_data(_records(dht, (me, 0, 4), (other, 0, 4))).num_peers == 2
    assert t._parse_swarm_progress_data(_records(dht, (me, 0, 4))).num_peers == 1
    assert t._parse_swarm_progress_data({}).num_peers == 0


def test_the_held_first_step_waits_for_the_peers_then_goes(dht):
    t = _tracker(dht)
    t.hold_first_step(peers=2, timeout=60)
    # Alone in its view with the whole target batch: hivemind would step on its own gradients.
    t.global_progress = t._parse_swarm_progress_data(_records(dht, (dht.peer_id.to_bytes(), 0, 8)))
    assert t.ready_by_estimate and not t.ready_to_update_epoch
    t.global_progress = t._parse_swarm_progress_data(
        _records(dht, (dht.peer_id.to_bytes(), 0, 8), (b"other-peer", 0, 4)))
    assert t.ready_to_update_epoch


def test_a_peer_ahead_is_followed_even_while_held(dht):
    t = _tracker(dht)
    t.hold_first_step(peers=3, timeout=60)
    t.global_progress = t._parse_swarm_progress_data(_records(dht, (b"other-peer", 1, 0)))
    assert t.global_epoch == 1 and t.ready_to_update_epoch


def test_the_hold_ends_at_its_timeout(dht, caplog):
    t = _tracker(dht)
    t.hold_first_step(peers=2, timeout=0.2)
    t.global_progress = t._parse_swarm_progress_data(_records(dht, (dht.peer_id.to_bytes(), 0, 8)))
    assert not t.ready_to_update_epoch
    time.sleep(0.3)
    assert t.ready_to_update_epoch
    assert any("1 of 2 peers" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("lockstep", [False, True])
def test_lockstep_never_steps_on_the_time_estimate(dht, lockstep: bool):
    t = _tracker(dht, lockstep=lockstep)
    view = t._parse_swarm_progress_data(_records(dht, (dht.peer_id.to_bytes(), 0, 4), (b"other-peer", 0, 0)))
    view.eta_next_epoch = 0.0  # the estimate has run out; 4 of 8 samples are there
    t.global_progress = view
    assert t.ready_by_estimate
    assert t.ready_to_update_epoch is (not lockstep)
    view.samples_accumulated = 8
    assert t.ready_to_update_epoch
