"""Generation through pipeline stages, the client side: one server session per span and request.

    gen = PipelineInference("serve", initial_peers, key, base_hash=model_fingerprint(model_dir))
    role = AdapterBlob.load("runs/witness/adapter")             # a PEFT folder, sent to the stages
    session = gen.session([(role, 1.0)])                       # adapters and weights of one request
    logits = gen.run(session.step(torch.tensor([prompt_ids])))  # [V]: prefill
    logits = gen.run(session.step(torch.tensor([[token]])))     # [V]: one more token
    gen.run(session.close()); gen.close()

Petals' design (bigscience-workshop/petals) on node0 stage servers: a session opens, per span of
layers, a stream to one replica of that span (`node0_patches.inference.StageInference`), which
keeps the session's KV cache of its layers keyed by the session id and position. A step sends the
new tokens to the head, the head's activations to the next span, and so on; the tail answers with
next-token logits, and sampling happens here (`gt_ext.serve`). The session keeps, per span, the
inputs it sent. When a replica fails (its stream breaks: killed, gone), the session opens a new
server session on another replica of that span and replays that span's inputs to it; the other
spans keep their caches and the answer goes on. A stage that lost the session (expired, restarted)
asks for the same replay. When no replica of a span is left, the error names the uncovered layers
(`plan_route`, the trainer's check), as soon as the failed stream is noticed.

Adapters travel by content: `AdapterBlob.name` is a hash of the adapter's weights, each stage is sent
only its own layers' A and B once (and again if it dropped them), and a step names the adapters with
their weights. A stage never opens a path a client names.

All coroutines run on hivemind's client event loop (`run`), where the DHT client's p2p lives.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gt_ext.errors import GtExtError
from gt_ext.pipeline.client import PipelineClient
from gt_ext.pipeline.records import StageRecord, describe_gaps
from gt_ext.swarm.auth import SwarmKey

log = logging.getLogger(__name__)

MESSAGE_BYTES = 2 << 20  # activations or adapter tensors per stream message (hivemind's limit is 4 MiB)


class StreamLost(Exception):
    """A replica's stream broke or did not answer in time: fail over."""


@dataclass
class AdapterBlob:
    """A LoRA adapter as the stages receive it: {full-model module name: (A [r, in], B [out, r])},
    its alpha/r, and a name that is a hash of all of it."""

    name: str
    scale: float
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]]
    folder: Path | None = None

    @classmethod
    def load(cls, path: str | Path) -> AdapterBlob:
        """Read a PEFT adapter folder (the serving runtime's reader and checks)."""
        from gt_ext.serve.adapter_stack import LoraAdapter

        ad = LoraAdapter.load(path, dtype=torch.float32)
        h = hashlib.sha256(f"scale={ad.scale!r}".encode())
        for module in sorted(ad.weights):
            a, b = ad.weights[module]
            h.update(module.encode())
            h.update(a.contiguous().numpy().tobytes())
            h.update(b.contiguous().numpy().tobytes())
        return cls(name="g" + h.hexdigest()[:24], scale=ad.scale, weights=ad.weights, folder=ad.path)

    def span_weights(self, first: int, last: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The modules of layers [first, last) (`model.layers.<i>....`)."""
        out = {}
        for module, ab in self.weights.items():
            parts = module.split(".")
            if parts[:2] == ["model", "layers"] and parts[2].isdigit() and first <= int(parts[2]) < last:
                out[module] = ab
        return out


class SpanStream:
    """One server session: a stream to one replica of one span."""

    def __init__(self, record: StageRecord, stub: Any, timeout: float):
        self.record, self.stub, self.timeout = record, stub, timeout
        self.session = uuid.uuid4().hex
        self.uploaded: set[str] = set()  # adapters this replica was sent (or already held)
        self._queue: asyncio.Queue = asyncio.Queue()
        self._responses: Any = None

    async def open(self, timeout: float) -> None:
        async def requests() -> Any:
            while True:
                item = await self._queue.get()
                if item is None:
                    return
                yield item

        try:
            self._responses = await asyncio.wait_for(self.stub.rpc_inference(requests()), timeout)
        except Exception as e:  # a dead peer: dial refused, daemon error, or no answer
            raise StreamLost(f"could not open a stream ({type(e).__name__}: {e})") from None

    async def call(self, meta: dict[str, Any], tensors: Sequence[torch.Tensor] = (),
                   timeout: float | None = None) -> tuple[dict[str, Any], list[torch.Tensor]]:
        """Send one message, wait for its answer: (metadata, tensors)."""
        from hivemind.compression import deserialize_torch_tensor, serialize_torch_tensor
        from hivemind.p2p import P2PHandlerError
        from hivemind.proto import runtime_pb2
        from hivemind.proto.runtime_pb2 import CompressionType
        from hivemind.utils import MSGPackSerializer

        request = runtime_pb2.ExpertRequest(
            uid=self.record.uid, metadata=MSGPackSerializer.dumps(meta),
            tensors=[serialize_torch_tensor(t.detach().cpu(), CompressionType.NONE) for t in tensors])
        await self._queue.put(request)
        try:
            reply = await asyncio.wait_for(self._responses.__anext__(), timeout or self.timeout)
        except StopAsyncIteration:
            raise StreamLost("the stream ended") from None
        except P2PHandlerError as e:
            msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            if "not a member" in msg:  # the key is wrong: no replica will take it
                raise GtExtError(f"stage {self.record.span_label} (peer {self.record.peer[-8:]}): {msg}") from None
            raise StreamLost(msg) from None
        except TimeoutError:
            raise StreamLost(f"no answer in {timeout or self.timeout:.0f} s") from None
        except Exception as e:  # the daemon or the connection went away
            raise StreamLost(f"{type(e).__name__}: {e}") from None
        return MSGPackSerializer.loads(reply.metadata), [deserialize_torch_tensor(t) for t in reply.tensors]

    async def close(self, say_bye: bool = True) -> None:
        """Drop the server session (best effort) and end the stream."""
        if say_bye and self._responses is not None:
            try:
                await self.call({"op": "close", "session": self.session}, timeout=5.0)
            except (StreamLost, GtExtError):
                pass
        await self._queue.put(None)


@dataclass
class _Span:
    first: int
    last: int
    stream: SpanStream | None = None
    inputs: list[torch.Tensor] = field(default_factory=list)  # what this span was sent, in order
    avoid: set[str] = field(default_factory=set)  # replicas that were full for this session
    stack: list[list[Any]] | None = None  # [[adapter name, weight]] of the adapters with layers here

    @property
    def label(self) -> str:
        return f"layers {self.first}-{self.last - 1}"


class InferenceSession:
    """One generation (one request) through the stages; see module docstring."""

    def __init__(self, owner: PipelineInference, spans: list[tuple[int, int]],
                 adapters: Sequence[tuple[AdapterBlob, float]]):
        self.owner = owner
        self.spans = [_Span(a, b) for a, b in spans]
        self.adapters = [(blob, float(w)) for blob, w in adapters if float(w) != 0.0]
        self.length = 0  # positions every span's cache holds
        self.failovers = 0  # replicas replaced during this session
        # The last step's time in the stages' layers (and their compute threads' CPU time), and in the
        # stage processes all told (which adds decoding messages and thread hand-overs there); the
        # rest of a step's wall time is messaging.
        self.compute_s = self.compute_cpu_s = self.stage_s = 0.0

    def replicas(self) -> list[str | None]:
        """The peer serving each span now (None before the first step or after a failure)."""
        return [s.stream.record.peer if s.stream else None for s in self.spans]

    async def step(self, ids: torch.Tensor) -> torch.Tensor:
        """Run new tokens ids [1, T] through every span at the next positions; next-token logits [V]."""
        if ids.dim() != 2 or ids.shape[0] != 1:
            raise GtExtError(f"a generation step takes token ids [1, T], got {tuple(ids.shape)}")
        x, start = ids.long(), self.length
        self.compute_s = self.compute_cpu_s = self.stage_s = 0.0
        sent = []
        for span in self.spans:
            sent.append(x)
            x = await self._span_step(span, x, start)
        # Recorded once every span took the step: a step that failed half-way can be sent again
        # (the stages rewind to `start`) without doubling any span's history.
        for span, inputs in zip(self.spans, sent, strict=True):
            span.inputs.append(inputs)
        self.length += int(ids.shape[1])
        return x[0]

    async def close(self) -> None:
        """Free the server sessions (they would expire on their own)."""
        for span in self.spans:
            if span.stream is not None:
                await span.stream.close()
                span.stream = None

    # -- one span -----------------------------------------------------------------------------------
    def _stack(self, span: _Span) -> list[list[Any]]:
        # Once per session and span: finding an adapter's modules of a span walks all its modules.
        if span.stack is None:
            span.stack = [[b.name, w] for b, w in self.adapters if b.span_weights(span.first, span.last)]
        return span.stack

    async def _span_step(self, span: _Span, x: torch.Tensor, start: int) -> torch.Tensor:
        last_problem = ""
        for _attempt in range(12):
            if span.stream is None:
                span.stream = await self._open(span)
            s = span.stream
            meta = {"op": "step", "session": s.session, "start": start, "adapters": self._stack(span)}
            try:
                reply, out = await s.call(meta, [x])
            except StreamLost as e:
                self._lost(span, e)
                continue
            code = reply.get("error")
            if code is None:
                self.compute_s += float(reply.get("compute_s") or 0.0)
                self.stage_s += float(reply.get("stage_s") or 0.0)
                self.compute_cpu_s += float(reply.get("compute_cpu_s") or 0.0)
                return out[0]
            last_problem = f"{reply.get('message')}"
            if code == "replay":  # the stage lost this session (expired, evicted, restarted)
                await self._replay(span, s)
            elif code == "adapter":  # it dropped an adapter: send it again
                s.uploaded.clear()
                await self._upload(span, s)
            elif code == "full":
                log.info("stage %s replica %s is full (%s): trying another", span.label, s.record.peer[-8:],
                         last_problem)
                span.avoid.add(s.record.peer)
                await s.close(say_bye=False)
                span.stream = None
            else:
                raise GtExtError(f"stage {span.label} (peer {s.record.peer[-8:]}): {last_problem}")
        raise GtExtError(f"stage {span.label}: generation step failed repeatedly (last: {last_problem})")

    def _lost(self, span: _Span, error: BaseException) -> None:
        s = span.stream
        if s is None:
            return
        self.owner.client.mark_dead(s.record, error)
        log.warning("generation: %s replica %s lost (%s); replaying %d position(s) to another", span.label,
                    s.record.peer[-8:], error, self.length)
        asyncio.ensure_future(s.close(say_bye=False))
        span.stream = None
        self.failovers += 1

    async def _open(self, span: _Span) -> SpanStream:
        """A new server session on a live replica of `span`, with the adapters and the span's inputs
        so far (a replica that fails while opening is skipped)."""
        for _attempt in range(8):
            rec = await self.owner.pick(span.first, span.last, span.avoid)
            s = SpanStream(rec, self.owner.stub(rec), self.owner.step_timeout)
            try:
                await s.open(self.owner.connect_timeout)
                await self._upload(span, s)
                await self._replay(span, s)
            except StreamLost as e:
                span.stream = s
                self._lost(span, e)
                continue
            return s
        raise GtExtError(f"stage {span.label}: no replica could take the session")

    async def _replay(self, span: _Span, s: SpanStream) -> None:
        """Send the span's inputs so far, from position 0, in chunks (their outputs are not needed)."""
        if not span.inputs:
            return
        history = torch.cat(span.inputs, dim=1)
        per_token = history[0, 0].numel() * history.element_size()
        chunk = max(1, MESSAGE_BYTES // max(per_token, 1))
        for at in range(0, history.shape[1], chunk):
            part = history[:, at:at + chunk]
            meta = {"op": "step", "session": s.session, "start": at, "adapters": self._stack(span), "keep": 1}
            reply, _ = await s.call(meta, [part])
            if reply.get("error"):
                raise GtExtError(f"stage {span.label} (peer {s.record.peer[-8:]}): replaying the session "
                                 f"failed: {reply.get('message')}")

    async def _upload(self, span: _Span, s: SpanStream) -> None:
        """Send each adapter's share for this span to the replica, once."""
        for blob, _w in self.adapters:
            if blob.name in s.uploaded:
                continue
            weights = blob.span_weights(span.first, span.last)
            if weights:
                parts = _chunk_modules(weights)
                for i, modules in enumerate(parts):
                    tensors = [t for m in modules for t in weights[m]]
                    meta = {"op": "adapter", "name": blob.name, "scale": blob.scale, "part": i,
                            "parts": len(parts), "modules": modules}
                    reply, _ = await s.call(meta, tensors)
                    if reply.get("error"):
                        raise GtExtError(f"stage {span.label}: adapter {blob.folder or blob.name} refused: "
                                         f"{reply.get('message')}")
            s.uploaded.add(blob.name)


def _chunk_modules(weights: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> list[list[str]]:
    """Module names in groups of at most MESSAGE_BYTES of tensors (one module per group at least)."""
    groups: list[list[str]] = [[]]
    size = 0
    for m in sorted(weights):
        n = sum(t.numel() * t.element_size() for t in weights[m])
        if groups[-1] and size + n > MESSAGE_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(m)
        size += n
    return groups


class PipelineInference:
    """A client of a pipeline run's stages for generation (see module docstring)."""

    def __init__(self, run: str, initial_peers: Sequence[str], key: SwarmKey | None, *,
                 base_hash: str | None = None, step_timeout: float = 120.0, connect_timeout: float = 15.0,
                 route_timeout: float = 60.0):
        self.client = PipelineClient(run, initial_peers, key, base_hash=base_hash, username="inference")
        self.run_name = run
        self.step_timeout, self.connect_timeout = step_timeout, connect_timeout
        self._route: list[list[StageRecord]] = self.client.wait_for_route(route_timeout)
        self._route_at = time.monotonic()
        self._rr = itertools.count()

    @property
    def spans(self) -> list[tuple[int, int]]:
        """The layer spans of the pipeline, in order."""
        return [(g[0].first, g[0].last) for g in self._route]

    @property
    def total_layers(self) -> int:
        return self._route[0][0].total

    def session(self, adapters: Sequence[tuple[AdapterBlob, float]] = ()) -> InferenceSession:
        """A new generation session (no stage is contacted before its first step)."""
        return InferenceSession(self, self.spans, adapters)

    def run(self, coro: Any) -> Any:
        """Run a coroutine of this client on its event loop, from any other thread."""
        return self.client._worker.run_coroutine(coro)

    def stub(self, record: StageRecord) -> Any:
        from hivemind.p2p import PeerID

        from node0_patches.inference import StageInference

        return StageInference.get_stub(self.client.p2p, PeerID.from_base58(record.peer))

    async def route(self, fresh: bool = False) -> list[list[StageRecord]]:
        """Replicas per span (re-read from the DHT every 2 s, or now when `fresh`); a one-line error
        naming the uncovered layers when the stages no longer form a pipeline."""
        if fresh or time.monotonic() - self._route_at > 2.0:
            loop = asyncio.get_running_loop()
            self._route = await loop.run_in_executor(None, self.client.route)
            self._route_at = time.monotonic()
        return self._route

    async def pick(self, first: int, last: int, avoid: set[str]) -> StageRecord:
        """A live replica of layers [first, last): the one with the fewest open sessions (announced),
        in turn among equals; raises naming the layers when none is left."""
        route = await self.route(fresh=True)
        group = next((g for g in route if (g[0].first, g[0].last) == (first, last)), None)
        if group is None:
            raise GtExtError(f"pipeline run {self.run_name}: no live stage serves {describe_gaps([(first, last)])} "
                             "(the stages were restarted with other spans)")
        live = [r for r in group if r.peer not in avoid]
        if not live:
            raise GtExtError(f"pipeline run {self.run_name}: every stage serving {describe_gaps([(first, last)])} "
                             "is full (generation sessions or cached tokens at their limit)")
        turn = next(self._rr)
        return min(live, key=lambda r: (int(r.extra.get("sessions") or 0), (live.index(r) - turn) % len(live)))

    def close(self) -> None:
        """Leave the swarm."""
        self.client.close()
