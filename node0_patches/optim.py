"""A node0 `AutoStepOptimizer` for adapters: trainable params only, NaN skips instead of killing.

node0's optimizer kills its whole process group (`os.killpg`) when a gradient is not finite. In a
fine-tuning swarm a NaN on one peer must make that peer skip the batch, never take anyone down.
"""

from __future__ import annotations

import logging
from typing import Any

from node0_patches import load_node0

log = logging.getLogger(__name__)


def trainable_parameters(model: Any) -> list[Any]:
    """The parameters an adapter optimizer may see (LoRA's, `requires_grad=True`)."""
    return [p for p in model.parameters() if p.requires_grad]


def trainable_autostep_optimizer_class() -> type:
    """Subclass of node0's `AutoStepOptimizer` (imported from $NODE0_PATH) for LoRA fine-tuning."""
    load_node0()
    from node0.server.optim import AutoStepOptimizer

    class TrainableAutoStepOptimizer(AutoStepOptimizer):
        """Averages and steps only trainable parameters; a non-finite gradient skips the batch."""

        def __init__(self, model: Any, *args: Any, params: Any = None, **kwargs: Any):
            params = trainable_parameters(model) if params is None else params
            if not params:
                raise ValueError("model has no trainable parameters (add LoRA adapters first)")
            super().__init__(model, *args, params=params, **kwargs)

        def _check_and_accumulate_gradients(self, batch_size: int) -> bool:
            if self.grad_averager.has_nan_grads():
                log.warning("non-finite gradient on this peer: skipping the batch (the swarm goes on)")
                self.grad_averager.reset_accumulated_grads_()
                self.tracker.report_local_progress(self.local_epoch, self.grad_averager.local_samples_accumulated)
                return False
            return super()._check_and_accumulate_gradients(batch_size)

    return TrainableAutoStepOptimizer
