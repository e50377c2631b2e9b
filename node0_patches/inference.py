"""Generation on a stage server: per-session KV caches and serving adapters, behind one members-only
streaming RPC.

    inference = StageInference(expert, uid, dht, key, run, InferenceLimits())
    inference.start()          # in the stage server's own process, next to the live weights
    ...
    inference.shutdown()

A client (`gt_ext.pipeline.inference`) opens one stream `StageInference.rpc_inference` per
generation session and span, and sends messages on it; each carries msgpack metadata and tensors:

    {"op": "step", "session": ID, "start": P, "adapters": [[name, weight], ...], "keep": K}, [x]
        x: token ids [1, T] (head) or activations [1, T, D] (other stages). The stage runs them at
        positions P..P+T-1 against the session's KV cache and answers with activations [1, K or T, D]
        (the tail: next-token logits of the last position [1, V]). P below the cached length
        rewinds the cache to P first (a step sent again); P above it, or a session the stage does
        not hold, answers `replay`: the client sends the session's inputs again from 0.
    {"op": "adapter", "name": N, "scale": S, "part": i, "parts": n, "modules": [...]}, [A, B, ...]
        upload (part i of n) this stage's share of a serving adapter; see `ServingAdapters`.
    {"op": "close", "session": ID}
        drop the session now (it would expire after `idle_s` otherwise).

Answers carry {"ok": true, "length": ..., "compute_s": ..., "compute_cpu_s": ..., "stage_s": ...} (a step:
the layers' own time and CPU time, and the stage process's whole time from the message's arrival to
its answer, which adds decoding the message and the hand-over to the compute thread and back) or {"error": CODE, "message": ...} with CODE one of
`replay` (resend the session's inputs), `adapter` (upload it), `full` (no room: try another
replica), `bad` (a client error). Only a caller without the swarm key gets the stream itself
refused ("not a member of swarm run ...").

Why here and not in hivemind's task pools: a pool request travels handler -> pool -> runtime
process and back through four pipes (and a unary call opens a fresh libp2p stream), which costs
several milliseconds per token and hop; a per-session stream answered in the process that holds
the weights costs well under one (bench/pipeline.py). Sessions are bounded: at most
`max_sessions` at once and `max_tokens` cached tokens over all of them; sessions idle for `idle_s`
are dropped, then a new session or step beyond the caps is refused with `full`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

# hivemind reads stream types from `typing.AsyncIterator[...]` hints: keep the typing one.
from typing import Any, AsyncIterator  # noqa: UP035

import torch
from hivemind.compression import deserialize_torch_tensor, serialize_torch_tensor
from hivemind.p2p import P2P, P2PContext, ServicerBase
from hivemind.proto import runtime_pb2
from hivemind.utils import MSGPackSerializer

from gt_ext.swarm.auth import Membership, SwarmKey

log = logging.getLogger(__name__)


@dataclass
class InferenceLimits:
    """What generation may hold on one stage."""

    max_sessions: int = 16  # sessions with a KV cache at once
    max_tokens: int = 32768  # cached tokens over all sessions (memory: tokens x layers x 2 x kv dims)
    idle_s: float = 120.0  # a session unused this long is dropped
    max_adapters: int = 8  # serving adapters held at once (least recently used dropped first)

    def __post_init__(self) -> None:
        from gt_ext.errors import GtExtError

        if min(self.max_sessions, self.max_tokens, self.max_adapters) < 1 or self.idle_s <= 0:
            raise GtExtError("inference limits: max sessions, tokens and adapters must be >= 1, idle time > 0")


class InferenceError(Exception):
    """A refused step, with the code the client acts on (see module docstring)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class Session:
    """One generation session on this stage: its KV cache and how many positions it holds."""

    cache: Any
    length: int = 0
    last_used: float = 0.0


class SessionStore:
    """Sessions by id, bounded in number and cached tokens, idle ones expiring (see module docstring).
    Not thread-safe: the servicer calls it from its single compute thread."""

    def __init__(self, limits: InferenceLimits, new_cache: Any, max_length: int,
                 clock: Any = time.monotonic):
        self.limits, self.new_cache, self.max_length, self.clock = limits, new_cache, max_length, clock
        self.sessions: dict[str, Session] = {}

    @property
    def tokens(self) -> int:
        return sum(s.length for s in self.sessions.values())

    def expire(self) -> int:
        """Drop sessions idle for longer than `idle_s`; returns how many."""
        now = self.clock()
        old = [sid for sid, s in self.sessions.items() if now - s.last_used > self.limits.idle_s]
        for sid in old:
            del self.sessions[sid]
        if old:
            log.info("dropped %d idle generation session(s)", len(old))
        return len(old)

    def prepare(self, sid: str, start: int, n: int) -> Session:
        """The session to run `n` new tokens at position `start` on, its cache rewound to `start`;
        InferenceError `replay` when it does not hold positions 0..start-1, `full` when over a cap."""
        if n < 1 or start < 0:
            raise InferenceError("bad", f"step of {n} token(s) at position {start}")
        if start + n > self.max_length:
            raise InferenceError("bad", f"positions up to {start + n} exceed the model's context of {self.max_length}")
        s = self.sessions.get(sid)
        if s is None and start > 0:
            raise InferenceError("replay", f"session {sid[:8]} is not held here (expired or never opened)")
        if s is not None and start > s.length:
            raise InferenceError("replay", f"session {sid[:8]} holds {s.length} positions, the step starts at {start}")
        if s is None and len(self.sessions) >= self.limits.max_sessions:
            self.expire()
        drop = s.length - start if s is not None else 0
        if self.tokens - drop + n > self.limits.max_tokens:
            self.expire()
            s = self.sessions.get(sid)
            drop = s.length - start if s is not None else 0
        if s is None and len(self.sessions) >= self.limits.max_sessions:
            raise InferenceError("full", f"{len(self.sessions)} sessions open (limit {self.limits.max_sessions})")
        if self.tokens - drop + n > self.limits.max_tokens:
            raise InferenceError("full", f"{self.tokens} tokens cached (limit {self.limits.max_tokens})")
        if s is None:
            if start > 0:  # expired just now
                raise InferenceError("replay", f"session {sid[:8]} expired")
            s = self.sessions[sid] = Session(cache=self.new_cache())
        if drop:
            s.cache.crop(-drop)  # transformers: a negative count removes that many positions
            s.length = start
        s.last_used = self.clock()
        return s

    def close(self, sid: str) -> None:
        self.sessions.pop(sid, None)


class ServingAdapters:
    """The serving adapters a stage holds, by name (a hash of the adapter's content, chosen by the
    client), uploaded by clients in parts and dropped least recently used beyond `max_adapters`
    (unfinished uploads too: at most `max_adapters`, the oldest dropped).

    A stage never reads an adapter from a path a client names: the client resolves the registry ref
    (`gt_ext.models.refs`), reads the PEFT folder and sends each stage only its own layers' A and B.
    Not thread-safe: called from the compute thread, under the stage's compute lock."""

    def __init__(self, stage: Any, max_adapters: int):
        self.stage, self.max_adapters = stage, max_adapters
        self.held: OrderedDict[str, None] = OrderedDict()
        self.pending: dict[str, dict[str, Any]] = {}

    def put(self, meta: dict[str, Any], tensors: list[torch.Tensor]) -> None:
        name, part, parts = str(meta["name"]), int(meta["part"]), int(meta["parts"])
        modules = list(meta["modules"])
        if name in self.held:
            return
        if len(tensors) != 2 * len(modules) or not 0 <= part < parts:
            raise InferenceError("bad", f"adapter {name}: part {part}/{parts} with {len(tensors)} tensors "
                                 f"for {len(modules)} modules")
        if name not in self.pending and len(self.pending) >= self.max_adapters:
            # uploads never finished (a client gone mid-upload): the oldest goes, memory stays bounded
            dropped = next(iter(self.pending))
            del self.pending[dropped]
            log.info("dropped the unfinished upload of serving adapter %s", dropped)
        got = self.pending.setdefault(name, {"parts": set(), "weights": {}, "scale": float(meta["scale"])})
        got["parts"].add(part)
        for i, m in enumerate(modules):
            got["weights"][m] = (tensors[2 * i], tensors[2 * i + 1])
        if len(got["parts"]) < parts:
            return
        del self.pending[name]
        try:
            self.stage.add_serving_adapter(name, got["scale"], got["weights"])
        except Exception as e:
            raise InferenceError("bad", f"adapter {name}: {e}") from None
        self.held[name] = None
        while len(self.held) > self.max_adapters:
            old, _ = self.held.popitem(last=False)
            self.stage.drop_serving_adapter(old)
            log.info("dropped serving adapter %s (limit %d)", old, self.max_adapters)

    def use(self, stack: list[list[Any]]) -> list[tuple[str, float]]:
        """[(name, weight)] for a step; InferenceError `adapter` naming the first one not held."""
        out = []
        for name, weight in stack:
            if name not in self.held:
                raise InferenceError("adapter", f"adapter {name} is not held here")
            self.held.move_to_end(name)
            out.append((str(name), float(weight)))
        return out


class StageInference(ServicerBase):
    """The generation RPC of one stage server (see module docstring). Runs its own event loop thread
    and one compute thread in the stage server's process."""

    def __init__(self, expert: Any, uid: str, dht: Any, key: SwarmKey | None, run: str,
                 limits: InferenceLimits | None = None, optimizer_lock: Any = None):
        self.expert, self.uid, self.dht, self.run = expert, uid, dht, run
        # Adding or dropping a serving adapter changes the stage's modules: the optimizer's thread
        # (its step, the subspace projection) must not walk them meanwhile. Taken after the compute
        # lock, the order the backend's forward takes them in.
        self.optimizer_lock = optimizer_lock if optimizer_lock is not None else threading.Lock()
        self.limits = limits or InferenceLimits()
        self.membership = Membership(key, run)
        max_length = int(getattr(expert.stage.config, "max_position_embeddings", 2048))
        self.sessions = SessionStore(self.limits, expert.stage.new_cache, max_length)
        self.adapters = ServingAdapters(expert.stage, self.limits.max_adapters)
        self.steps = 0  # tokens-steps served, for the announcement
        self._compute = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="stage-inference")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="stage-inference-loop", daemon=True)
        self._p2p: P2P | None = None

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> None:
        """Serve `StageInference.rpc_inference` on the stage's p2p daemon (shared with its DHT)."""
        from hivemind.dht import DHT

        self._thread.start()
        maddr = self.dht.run_coroutine(DHT._get_p2p_daemon_listen_maddr)

        async def attach() -> None:
            self._p2p = await P2P.replicate(maddr)
            await self.add_p2p_handlers(self._p2p)
            self._loop.create_task(self._sweep())

        asyncio.run_coroutine_threadsafe(attach(), self._loop).result(timeout)

    def shutdown(self) -> None:
        """Stop answering and drop every session (bounded; the stage process exits after it)."""
        async def detach() -> None:
            if self._p2p is not None:
                try:
                    await self.remove_p2p_handlers(self._p2p)
                finally:
                    await self._p2p.shutdown()

        if self._thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(detach(), self._loop).result(5.0)
            except Exception as e:  # the daemon may be gone already
                log.debug("inference detach: %s", e)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5.0)
        self._compute.shutdown(wait=False, cancel_futures=True)
        self.sessions.sessions.clear()

    async def _sweep(self) -> None:
        """Expire idle sessions even when no request comes."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(5.0, self.limits.idle_s / 2))
            await loop.run_in_executor(self._compute, self.sessions.expire)

    def stats(self) -> dict[str, Any]:
        """Live numbers for the stage announcement."""
        return {"sessions": len(self.sessions.sessions), "cached_tokens": self.sessions.tokens,
                "serving_adapters": len(self.adapters.held), "inference_steps": self.steps}

    # -- the RPC ------------------------------------------------------------------------------------
    async def rpc_inference(
        self, requests: AsyncIterator[runtime_pb2.ExpertRequest], context: P2PContext
    ) -> AsyncIterator[runtime_pb2.ExpertResponse]:
        """One stream per client session and span (see module docstring); members only."""
        if not await self.membership.check(self.dht, context.remote_id):
            log.warning("refused generation from %s: no membership proof for run %s", context.remote_id, self.run)
            raise PermissionError(f"not a member of swarm run {self.run} (no valid swarm key proof)")
        loop = asyncio.get_running_loop()
        async for request in requests:
            arrived = time.perf_counter()
            try:
                meta = MSGPackSerializer.loads(request.metadata)
                tensors = [deserialize_torch_tensor(t) for t in request.tensors]
                if request.uid != self.uid:
                    raise InferenceError("bad", f"this stage serves {self.uid}, not {request.uid}")
                reply, out = await loop.run_in_executor(self._compute, self._handle, meta, tensors)
                if "compute_s" in reply:  # this process's whole time on the step, compute included
                    reply["stage_s"] = time.perf_counter() - arrived
            except InferenceError as e:
                reply, out = {"error": e.code, "message": str(e)}, []
            except Exception as e:  # a bug or bad tensors: answer, keep the stream and the stage up
                log.warning("generation step failed: %s", e, exc_info=log.isEnabledFor(logging.DEBUG))
                reply, out = {"error": "bad", "message": f"{type(e).__name__}: {e}"}, []
            yield runtime_pb2.ExpertResponse(tensors=[serialize_torch_tensor(t) for t in out],
                                             metadata=MSGPackSerializer.dumps(reply))

    def _handle(self, meta: dict[str, Any], tensors: list[torch.Tensor]) -> tuple[dict[str, Any], list[torch.Tensor]]:
        """One message, on the compute thread, under the stage's compute lock (training shares it)."""
        op = meta.get("op")
        with self.expert.compute_lock:
            if op == "step":
                if len(tensors) != 1:
                    raise InferenceError("bad", "a step carries one tensor")
                x, start = tensors[0], int(meta["start"])
                session = self.sessions.prepare(str(meta["session"]), start, int(x.shape[1]))
                stack = self.adapters.use(meta.get("adapters") or [])
                t0, cpu0 = time.perf_counter(), time.thread_time()
                try:
                    with torch.inference_mode(), self.expert.stage.serving_adapters(stack):
                        out = self.expert.infer(x, start, session.cache, keep=int(meta.get("keep") or 0))
                except BaseException:
                    self.sessions.close(str(meta["session"]))  # a half-updated cache is useless
                    raise
                session.length = start + int(x.shape[1])
                self.steps += 1
                # compute_s: this stage's own time on the step (the client tells it from the transport's);
                # compute_cpu_s: the compute thread's CPU time on it (what the load of the machine
                # does not stretch: comparable with one process's on a busy machine)
                return {"ok": True, "length": session.length, "compute_s": time.perf_counter() - t0,
                        "compute_cpu_s": time.thread_time() - cpu0}, [out]
            if op == "adapter":
                with self.optimizer_lock:
                    self.adapters.put(meta, tensors)
                return {"ok": True}, []
            if op == "close":
                self.sessions.close(str(meta["session"]))
                return {"ok": True}, []
        raise InferenceError("bad", f"unknown op {op!r}")
