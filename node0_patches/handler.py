"""The stage's connection handler: hivemind's, with every RPC refused to peers without the swarm key,
plus two RPCs of our own (stage info and reset).

hivemind's expert RPCs (`rpc_forward`, `rpc_backward` and their streaming forms, `rpc_info`) carry no
authorization at all; node0 relies on its auth server. Here a caller must have published a
membership proof for the run in the (key-protected) DHT (`gt_ext.swarm.auth.Membership`); the libp2p
connection authenticates its peer id, so a copied proof is useless. A refused call fails with
"not a member of swarm run ...".

    rpc_stage_info(ExpertUID) -> ExpertInfo   msgpack {static stage facts + live counters}
    rpc_stage_reset(ExpertUID) -> ExpertInfo  drop accumulated gradients (a trainer restarting a step)
    rpc_stage_adapter(ExpertUID) -> ExpertResponse  the live LoRA weights [1, N] and their step [1]

Protocol names follow the class name (`StageHandler.rpc_forward`), as hivemind's do.
"""

from __future__ import annotations

import asyncio
import functools
import logging

# hivemind reads stream types from `typing.AsyncIterator[...]` hints: keep the typing one.
from typing import Any, AsyncIterator  # noqa: UP035

import torch
from hivemind.compression import serialize_torch_tensor
from hivemind.moe.server.connection_handler import ConnectionHandler
from hivemind.p2p import P2PContext
from hivemind.proto import runtime_pb2
from hivemind.utils import MSGPackSerializer

from gt_ext.swarm.auth import Membership, SwarmKey

log = logging.getLogger(__name__)


class StageHandler(ConnectionHandler):
    """hivemind ConnectionHandler gated by the swarm key (see module docstring)."""

    def __init__(self, dht: Any, module_backends: dict[str, Any], *, swarm_key: SwarmKey | None, run: str,
                 info: dict[str, Any], **kwargs: Any):
        super().__init__(dht, module_backends, **kwargs)
        self._membership = Membership(swarm_key, run)
        self._run = run
        self._info = dict(info)

    async def _gate(self, context: P2PContext) -> None:
        if not await self._membership.check(self.dht, context.remote_id):
            log.warning("refused a request from %s: no membership proof for run %s", context.remote_id, self._run)
            raise PermissionError(f"not a member of swarm run {self._run} (no valid swarm key proof)")

    async def rpc_info(self, request: runtime_pb2.ExpertUID, context: P2PContext) -> runtime_pb2.ExpertInfo:
        await self._gate(context)
        return await super().rpc_info(request, context)

    async def rpc_forward(self, request: runtime_pb2.ExpertRequest, context: P2PContext) -> runtime_pb2.ExpertResponse:
        await self._gate(context)
        return await super().rpc_forward(request, context)

    async def rpc_forward_stream(
        self, requests: AsyncIterator[runtime_pb2.ExpertRequest], context: P2PContext
    ) -> AsyncIterator[runtime_pb2.ExpertRequest]:
        await self._gate(context)
        async for response in super().rpc_forward_stream(requests, context):
            yield response

    async def rpc_backward(self, request: runtime_pb2.ExpertRequest, context: P2PContext) -> runtime_pb2.ExpertResponse:
        await self._gate(context)
        return await super().rpc_backward(request, context)

    async def rpc_backward_stream(
        self, requests: AsyncIterator[runtime_pb2.ExpertRequest], context: P2PContext
    ) -> AsyncIterator[runtime_pb2.ExpertResponse]:
        await self._gate(context)
        async for response in super().rpc_backward_stream(requests, context):
            yield response

    def _stage_info(self, uid: str) -> dict[str, Any]:
        backend = self.module_backends[uid]
        shapes = {n: list(t.shape) for n, t in backend.module.stage.adapter_state().items()}
        return {**self._info, "uid": uid, **backend.module.counters.snapshot(),
                "adapter_names": backend.adapter_names, "adapter_shapes": [shapes[n] for n in backend.adapter_names]}

    async def rpc_stage_info(self, request: runtime_pb2.ExpertUID, context: P2PContext) -> runtime_pb2.ExpertInfo:
        """Static facts of the stage (span, base-model and config fingerprints) + live counters."""
        await self._gate(context)
        return runtime_pb2.ExpertInfo(serialized_info=MSGPackSerializer.dumps(self._stage_info(request.uid)))

    async def rpc_stage_reset(self, request: runtime_pb2.ExpertUID, context: P2PContext) -> runtime_pb2.ExpertInfo:
        """Drop the gradients accumulated toward the current step (the optimizer's thread does it);
        waits up to 10 s for it to happen."""
        await self._gate(context)
        c = self.module_backends[request.uid].module.counters
        with c.reset_requests.get_lock():
            c.reset_requests.value += 1
            want = c.reset_requests.value
        for _ in range(200):
            if c.reset_done.value >= want:
                break
            await asyncio.sleep(0.05)
        return runtime_pb2.ExpertInfo(serialized_info=MSGPackSerializer.dumps(self._stage_info(request.uid)))


    async def rpc_stage_adapter(self, request: runtime_pb2.ExpertUID, context: P2PContext) -> runtime_pb2.ExpertResponse:
        """The live LoRA weights of the stage, flat, with their step (see StageBackend.adapter_snapshot)."""
        await self._gate(context)
        backend = self.module_backends[request.uid]
        flat, epoch = await backend.adapter_pool.submit_task(torch.zeros(1))
        return runtime_pb2.ExpertResponse(tensors=[serialize_torch_tensor(flat), serialize_torch_tensor(epoch)])


def handler_factory(swarm_key: SwarmKey | None, run: str, info: dict[str, Any]) -> Any:
    """What hivemind's Server calls as `ConnectionHandler(dht, module_backends)`."""
    return functools.partial(StageHandler, swarm_key=swarm_key, run=run, info=info)
