"""The stage's node0 module backend: node0's `ModuleCollab` with one request per batch, a step that
only accumulates (the optimizer's own thread steps when the stage's replicas hold the target number
of micro-batches), non-finite gradients skipped and counted, and live counters (`StageCounters`,
held by the expert so the optimizer sees them too) shared with the connection handlers, which run
in forked processes, through shared memory.

    backend = stage_backend_class()(optimizer_lock=lock, name=uid, module=expert, args_schema=...)
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import multiprocessing as mp
import time
from collections import OrderedDict
from typing import Any

import torch

from node0_patches import load_node0

log = logging.getLogger(__name__)


class StageCounters:
    """Shared-memory counters of one stage, readable from every process of the server."""

    def __init__(self) -> None:
        self.epoch = mp.Value(ctypes.c_long, 0)  # global steps this stage applied
        self.samples = mp.Value(ctypes.c_long, 0)  # micro-batches accumulated toward the next step
        self.nan_skips = mp.Value(ctypes.c_long, 0)  # micro-batches dropped for a non-finite gradient
        self.tokens = mp.Value(ctypes.c_double, 0.0)  # tokens through backward, since start
        self.busy_s = mp.Value(ctypes.c_double, 0.0)  # seconds spent in forward/backward
        self.peers = mp.Value(ctypes.c_long, 1)  # replicas of this stage seen in the last round
        self.reset_requests = mp.Value(ctypes.c_long, 0)  # asked by a trainer: drop accumulated grads
        self.reset_done = mp.Value(ctypes.c_long, 0)
        self.last_error = mp.Array(ctypes.c_char, 256)

    def snapshot(self) -> dict[str, Any]:
        """Plain values for a stage-info reply."""
        return {"epoch": self.epoch.value, "samples": self.samples.value, "nan_skips": self.nan_skips.value,
                "tokens": self.tokens.value, "busy_s": self.busy_s.value, "peers": self.peers.value,
                "reset_done": self.reset_done.value,
                "last_error": self.last_error.value.decode(errors="replace")}


_KEEP_GRAPHS = 2  # training forwards whose graphs wait for their backward (the trainer sends one at a time)


def _inputs_key(inputs: tuple[torch.Tensor, ...] | list[torch.Tensor]) -> bytes:
    """A digest of a request's tensors: a backward carries the same inputs as its forward."""
    h = hashlib.blake2b(digest_size=16)
    for t in inputs:
        c = t.detach().contiguous()
        h.update(str((c.dtype, tuple(c.shape))).encode())
        h.update(c.view(torch.uint8).numpy() if c.numel() else b"")
    return h.digest()


@functools.cache
def one_task_pool_class() -> type:
    """hivemind TaskPool that never merges requests: each request is its own batch (and one
    micro-batch of the trainer), so a stage counts micro-batches exactly and rows of different
    requests (of different lengths) never need to be concatenated."""
    from queue import Empty

    from hivemind.moe.server.task_pool import TaskPool

    class OneTaskPool(TaskPool):
        def iterate_minibatches(self, *args: Any, **kwargs: Any) -> Any:
            while True:
                try:
                    task = self.tasks.get(timeout=self.timeout)
                except Empty:
                    continue
                if task.future.set_running_or_notify_cancel():
                    yield [task]

    return OneTaskPool


@functools.cache
def stage_backend_class() -> type:
    """node0's ModuleCollab, adapted for LoRA fine-tuning (see module docstring)."""
    load_node0()
    from node0.server.module_collab import ModuleCollab

    pool_cls = one_task_pool_class()

    class StageBackend(ModuleCollab):
        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.counters: StageCounters = self.module.counters  # made by the expert, shared with the optimizer
            # The pools ModuleBackend made count rows; replace them before anything starts them.
            big = 1 << 30  # a request is never refused for its size; pools do not merge requests anyway
            self.forward_pool = pool_cls(self.forward, name=f"{self.name}_forward", max_batch_size=big)
            self.backward_pool = pool_cls(self.backward, name=f"{self.name}_backward", max_batch_size=big)
            # Reads the live adapter in the runtime's process (the handlers hold stale copies).
            self.adapter_pool = pool_cls(self.adapter_snapshot, name=f"{self.name}_adapter", max_batch_size=big)
            self.adapter_names = list(self.module.stage.adapter_state())  # PEFT names, fixed order
            self._graphs: OrderedDict[bytes, tuple[list[torch.Tensor], torch.Tensor]] = OrderedDict()

        def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
            """A training forward (LoRA on) keeps its autograd graph, keyed by its inputs, so the
            backward of the same micro-batch does not re-run the forward (node0 always re-runs it;
            a backward whose graph is gone still does)."""
            t0 = time.perf_counter()
            try:
                with self.module.compute_lock:  # generation shares the module (node0_patches.inference)
                    adapter_on = inputs[3]  # every stage's fourth input (node0_patches.experts)
                    if not bool((adapter_on > 0.5).all()):
                        return super().forward(*inputs)  # DPO reference: no backward will come
                    args = [t.detach().requires_grad_(t.is_floating_point()) for t in inputs]
                    with torch.enable_grad(), self.optimizer_lock:
                        out = self.module(*args)
                self._graphs[_inputs_key(inputs)] = (args, out)
                while len(self._graphs) > _KEEP_GRAPHS:
                    self._graphs.popitem(last=False)
                return (out.detach(),)
            finally:
                with self.counters.busy_s.get_lock():
                    self.counters.busy_s.value += time.perf_counter() - t0

        def backward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
            t0 = time.perf_counter()
            try:
                n = len(inputs) - 1  # the forward inputs, then d loss / d output
                found = self._graphs.pop(_inputs_key(inputs[:n]), None)
                with self.module.compute_lock:
                    if found is None:
                        return super().backward(*inputs)  # node0's way: re-run the forward
                    args, out = found
                    try:
                        with torch.enable_grad(), self.optimizer_lock:
                            torch.autograd.backward(out, inputs[n].to(out.dtype))
                    except RuntimeError as e:  # e.g. parameters changed since (a step in between)
                        log.debug("kept graph unusable (%s): re-running the forward", e)
                        for p in self.module.parameters():
                            p.grad = None
                        return super().backward(*inputs)
                self.on_backward(args[0].shape[0])
                return tuple(a.grad if a.grad is not None else torch.zeros_like(a) for a in args)
            finally:
                with self.counters.busy_s.get_lock():
                    self.counters.busy_s.value += time.perf_counter() - t0
                # position_ids [B, T] is the second input of every stage
                with self.counters.tokens.get_lock():
                    self.counters.tokens.value += float(inputs[1].numel())

        def on_backward(self, batch_size: int) -> None:
            """One micro-batch's gradients are in .grad: hand them to the optimizer (which skips a
            non-finite one), then clear them. The optimizer's thread takes the step."""
            if self.optimizer is not None:
                accepted = self.optimizer.accumulate(batch_size=1)
                if not accepted:
                    with self.counters.nan_skips.get_lock():
                        self.counters.nan_skips.value += 1
                self.optimizer.zero_grad()

        def adapter_snapshot(self, dummy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """The stage's LoRA weights as one flat row [1, N] (order: `adapter_names`) and the
            step they belong to [1]."""
            with self.optimizer_lock:
                state = self.module.stage.adapter_state()
                flat = torch.cat([state[n].reshape(-1).float() for n in self.adapter_names])
                epoch = torch.tensor([float(self.counters.epoch.value)])
            return flat[None], epoch

        def get_pools(self) -> tuple[Any, ...]:
            return self.forward_pool, self.backward_pool, self.adapter_pool

        def get_info(self) -> dict[str, Any]:
            info = super().get_info()
            info["stage"] = self.counters.snapshot()
            return info

    return StageBackend
