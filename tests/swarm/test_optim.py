"""SwarmOptimizer on a real hivemind DHT (127.0.0.1, in this process): what it counts and says."""

from __future__ import annotations

import logging

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _one_param_optimizer(dht, target: int):
    import torch

    from gt_ext.swarm.optim import make_optimizer

    p = torch.nn.Parameter(torch.zeros(4))
    opt = make_optimizer(dht, [p], "gt-optim-test", target_batch_size=target, batch_size=4, lr=0.1,
                         matchmaking_time=1.0, averaging_timeout=5.0, lockstep=True)
    return opt, p


@pytest.mark.parametrize("batches, local", [(1, 1), (2, 0)])
def test_a_step_on_this_peers_gradients_below_the_target_batch_is_counted(caplog, batches: int, local: int):
    """Alone in the swarm, a step taken on 4 of 8 target samples used this peer's gradients only:
    counted in `local_rounds` (a swarm run reports it) and logged; a step on the whole target
    batch, even from one peer, is not."""
    import torch

    from gt_ext.swarm.dht import start_dht

    dht = start_dht()
    opt = None
    try:
        opt, p = _one_param_optimizer(dht, target=8)
        for _ in range(batches):
            p.grad = torch.ones(4)
            opt.step(batch_size=4)  # accumulates; 8 samples reach the target and step at once
        with caplog.at_level(logging.WARNING, logger="gt_ext.swarm.optim"):
            if opt.local_epoch == 0:
                opt._update_global_epoch(grad_scaler=None)  # what finish_epoch does on its timeout
        assert opt.local_epoch == 1
        assert float(p.detach().abs().sum()) > 0  # the step happened
        assert opt.local_rounds == local
        warned = [r.getMessage() for r in caplog.records if "gradients only" in r.getMessage()]
        assert len(warned) == local, warned
        if local:
            assert "4 of 8 samples" in warned[0]
    finally:
        if opt is not None:
            opt.shutdown()
        dht.shutdown()
