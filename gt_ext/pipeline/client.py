"""A trainer's connection to a pipeline run: find the stages, route through them, call them.

    client = PipelineClient("witness", initial_peers, key)
    route = client.route()                          # [[replicas of layers 0-9], [layers 10-19], ...]
    out = client.forward(route[0], (ids, pos, ex, on))          # -> tuple of output tensors
    grads = client.backward(route[0], (ids, pos, ex, on), (grad_out,))
    info = client.stage_info(record); flat, step = client.adapter(record)
    client.close()

The client is a hivemind DHT node in client mode, holding the swarm key (it publishes its membership
proof, without which stages refuse it). Calls go to one replica of a span (round robin); a replica
that cannot be reached is marked dead and the call goes to the next; when no replica of a span is
left, the error names the uncovered layers. Errors a stage raises (a refused key, bad input) are
not failover cases: they come back as one-line GtExtErrors.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from gt_ext.errors import GtExtError
from gt_ext.pipeline.records import StageRecord, describe_gaps, plan_route, read_stage_records
from gt_ext.swarm.auth import SwarmKey, publish_membership

log = logging.getLogger(__name__)


class StageUnreachable(Exception):
    """A replica did not answer (dead, or its connection failed)."""


class PipelineClient:
    """See module docstring."""

    def __init__(
        self,
        run: str,
        initial_peers: Sequence[str],
        key: SwarmKey | None,
        *,
        base_hash: str | None = None,
        settings_hash: str | None = None,
        call_timeout: float = 300.0,
        username: str = "trainer",
        client_mode: bool = True,
    ):
        from hivemind.moe.client.remote_expert_worker import RemoteExpertWorker

        from gt_ext.swarm.dht import start_dht

        self.run, self.key = run, key
        self.base_hash, self.settings_hash = base_hash, settings_hash
        self.call_timeout = call_timeout
        self.dht = start_dht(initial_peers, None, key, run_id=run, client_mode=client_mode, username=username)
        self._worker = RemoteExpertWorker
        self.p2p = self._worker.run_coroutine(self.dht.replicate_p2p())
        self._dead_at: dict[str, float] = {}  # peer -> when it failed a call (until it announces again)
        self._rr: dict[tuple[int, int], Any] = {}  # round robin over the replicas of each span
        self._last_membership = time.monotonic()
        self.last_request_bytes = 0  # serialized size of the last forward request (activations on the wire)

    # -- discovery ----------------------------------------------------------------------------------
    def records(self) -> list[StageRecord]:
        """Live stage announcements, without replicas that failed a call since their last one."""
        out = []
        for r in read_stage_records(self.dht, self.run):
            died = self._dead_at.get(r.peer)
            if died is not None and float(r.extra.get("updated", 0)) <= died + 1.0:
                continue  # announced before it failed us: still dead
            self._dead_at.pop(r.peer, None)
            out.append(r)
        return out

    def route(self) -> list[list[StageRecord]]:
        """Replicas per span in layer order; a one-line error when the live stages do not form one
        pipeline (uncovered layers, other base model or settings)."""
        if self.key is not None and time.monotonic() - self._last_membership > 30:
            publish_membership(self.dht, self.run, self.key)
            self._last_membership = time.monotonic()
        return plan_route(self.records(), self.run, self.base_hash, self.settings_hash)

    def wait_for_route(self, timeout: float, poll_s: float = 0.5,
                       check: Callable[[], None] | None = None) -> list[list[StageRecord]]:
        """`route()` once the stages have come up (or the last error after `timeout`); `check()`
        runs on every poll and may raise (e.g. a stage the caller started has exited)."""
        deadline = time.monotonic() + timeout
        while True:
            if check is not None:
                check()
            try:
                return self.route()
            except GtExtError:
                if time.monotonic() >= deadline:
                    raise
            time.sleep(poll_s)

    # -- calls ------------------------------------------------------------------------------------------
    def _stub(self, record: StageRecord) -> Any:
        from hivemind.p2p import PeerID

        from node0_patches.handler import StageHandler

        return StageHandler.get_stub(self.p2p, PeerID.from_base58(record.peer))

    def _run(self, coro: Any) -> Any:
        async def bounded() -> Any:
            return await asyncio.wait_for(coro, self.call_timeout)

        return self._worker.run_coroutine(bounded())

    def mark_dead(self, record: StageRecord, error: BaseException) -> None:
        """Leave a replica out of routes until it announces itself again (it failed a call)."""
        log.warning("stage %s replica %s unreachable (%s): trying another", record.span_label, record.peer[-8:],
                    type(error).__name__)
        self._dead_at[record.peer] = float(self._dht_time())

    def is_dead(self, record: StageRecord) -> bool:
        """Whether this replica failed a call and has not announced itself since."""
        return record.peer in self._dead_at

    def _dht_time(self) -> float:
        from hivemind.utils.timed_storage import get_dht_time

        return get_dht_time()

    def call(self, replicas: list[StageRecord], fn: Any, prefer: int | None = None) -> Any:
        """Run `fn(record, stub)` (a coroutine) on one live replica of a span, failing over to the
        others; the error names the span when none answers. `prefer`: try replica
        `prefer % len(replicas)` first (else round robin)."""
        from hivemind.p2p import P2PHandlerError

        if not replicas:
            raise GtExtError(f"pipeline run {self.run}: no live stage serves the requested layers")
        start = prefer if prefer is not None else next(
            self._rr.setdefault((replicas[0].first, replicas[0].last), itertools.count()))
        order = [replicas[(start + i) % len(replicas)] for i in range(len(replicas))]
        last: BaseException | None = None
        for rec in order:
            if rec.peer in self._dead_at:
                continue
            try:
                return self._run(fn(rec, self._stub(rec)))
            except P2PHandlerError as e:  # the stage answered with an error: not a failover case
                msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
                raise GtExtError(f"stage {rec.span_label} (peer {rec.peer[-8:]}): {msg}") from None
            except TimeoutError as e:
                self.mark_dead(rec, e)
                last = e
            except Exception as e:  # a dead peer surfaces as daemon or connection errors
                self.mark_dead(rec, e)
                last = e
        r = replicas[0]
        raise GtExtError(f"pipeline run {self.run}: no live stage serves {describe_gaps([(r.first, r.last)])} "
                         f"({len(replicas)} replica(s) failed, last: {type(last).__name__})")

    def forward(self, replicas: list[StageRecord], inputs: Sequence[torch.Tensor],
                prefer: int | None = None) -> list[torch.Tensor]:
        """One forward of a span on one replica (see `call` for `prefer`)."""
        from hivemind.moe.client.expert import expert_forward

        inputs = [t.detach().cpu() for t in inputs]
        wire = _serialize(inputs)
        self.last_request_bytes = sum(t.ByteSize() for t in wire)

        async def fn(rec: StageRecord, stub: Any) -> list[torch.Tensor]:
            return await expert_forward(rec.uid, inputs, wire, stub)

        return self.call(replicas, fn, prefer)

    def backward(self, replicas: list[StageRecord], inputs: Sequence[torch.Tensor],
                 grad_outputs: Sequence[torch.Tensor], prefer: int | None = None) -> list[torch.Tensor]:
        """Backward of a span (the stage re-runs its forward, accumulates its LoRA gradients and
        returns the gradients of its inputs, zeros for integer inputs)."""
        from hivemind.moe.client.expert import expert_backward

        tensors = [t.detach().cpu() for t in (*inputs, *grad_outputs)]

        async def fn(rec: StageRecord, stub: Any) -> list[torch.Tensor]:
            return await expert_backward(rec.uid, tensors, _serialize(tensors), stub)

        return self.call(replicas, fn, prefer)

    def stage_info(self, record: StageRecord) -> dict[str, Any]:
        """Facts and live counters of one replica (raises StageUnreachable if it does not answer)."""
        from hivemind.p2p import P2PHandlerError
        from hivemind.proto import runtime_pb2
        from hivemind.utils import MSGPackSerializer

        try:
            reply = self._run(self._stub(record).rpc_stage_info(runtime_pb2.ExpertUID(uid=record.uid)))
        except P2PHandlerError as e:
            raise GtExtError(f"stage {record.span_label}: {str(e).strip().splitlines()[-1]}") from None
        except Exception as e:
            self.mark_dead(record, e)
            raise StageUnreachable(record.peer) from e
        return MSGPackSerializer.loads(reply.serialized_info)

    def reset(self, record: StageRecord) -> dict[str, Any]:
        """Ask a replica to drop gradients accumulated toward an interrupted step."""
        from hivemind.proto import runtime_pb2
        from hivemind.utils import MSGPackSerializer

        reply = self._run(self._stub(record).rpc_stage_reset(runtime_pb2.ExpertUID(uid=record.uid)))
        return MSGPackSerializer.loads(reply.serialized_info)

    def adapter(self, replicas: list[StageRecord]) -> tuple[dict[str, torch.Tensor], int]:
        """The live LoRA weights of a span ({PEFT name: tensor}) and the step they belong to."""
        from hivemind.compression import deserialize_torch_tensor
        from hivemind.proto import runtime_pb2

        async def fn(rec: StageRecord, stub: Any) -> tuple[StageRecord, Any]:
            return rec, await stub.rpc_stage_adapter(runtime_pb2.ExpertUID(uid=rec.uid))

        rec, reply = self.call(replicas, fn)
        flat, epoch = (deserialize_torch_tensor(t) for t in reply.tensors)
        info = self.stage_info(rec)
        out, at = {}, 0
        for name, shape in zip(info["adapter_names"], info["adapter_shapes"], strict=True):
            n = int(torch.Size(shape).numel())
            out[name] = flat[0, at:at + n].reshape(shape).clone()
            at += n
        return out, int(epoch[0])

    def close(self) -> None:
        """Leave the swarm: close this client's daemon connection, then the DHT node and its daemon."""
        try:
            self._worker.run_coroutine(self.p2p.shutdown())
        except Exception as e:  # the daemon may already be gone
            log.debug("p2p shutdown: %s", e)
        self.dht.shutdown()


def _serialize(tensors: Sequence[torch.Tensor]) -> list[Any]:
    from hivemind.compression import serialize_torch_tensor
    from hivemind.proto.runtime_pb2 import CompressionType

    return [serialize_torch_tensor(t, CompressionType.NONE) for t in tensors]
