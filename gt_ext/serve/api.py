"""OpenAI-compatible prompt API: `/v1/chat/completions` (with SSE streaming) and `/v1/models`.

    app = create_app(generator, model, token=None)    # then uvicorn on 127.0.0.1

Extensions to OpenAI's request: `top_k`, `repetition_penalty`, `choices` (`{"FIELD": [NAME, ...]}`:
the answer's JSON string field FIELD can only take a listed NAME, gt_ext.serve.choices), and
`adapters` (a list of `"REF"` / `"REF=WEIGHT"` / `{"name", "weight"}`; REF is a registry model or
an adapter the server was started with; `[]` = base model only) to pick the adapter stack per request. A request whose
`model` names another registry model on the same base is served with that model's adapter, also
without reloading the base. Bad requests get 4xx with `{"error": {"message", "type", "param"}}`.

Limits (`ApiLimits`), all checked before a request joins a batch, so a bad request fails alone:
a bearer token (when set) on every route, `/docs` and `/health` included, of at least
`MIN_TOKEN_CHARS` characters; request bodies of at most `max_body_bytes` (413), read within
`body_timeout_s` (408); message text of at most `max_prompt_chars`; `max_tokens` within what the
model's context leaves after the prompt; at most `max_per_client` requests in flight per client
address (429); a request rate per client address (`RateLimiter`, a token bucket: 429 with
`Retry-After`), where a request whose client hangs up before its answer is complete costs
`abandon_cost` more; stop strings bounded in count and length (`params.MAX_STOPS`,
`MAX_STOP_CHARS`) and matched in linear time; a request whose client disconnects stops generating.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from gt_ext.errors import GtExtError
from gt_ext.serve.batcher import Batcher, Job
from gt_ext.serve.params import SamplingParams

log = logging.getLogger(__name__)

MIN_TOKEN_CHARS = 32  # a bearer token shorter than this is refused (e.g. 32 hex digits = 128 bits)
MAX_HELD = 32  # refused requests held before their 429, all clients together (connections are bounded)


@dataclass
class ApiLimits:
    """What one client or one request may cost the server."""

    max_body_bytes: int = 1 << 20  # request body
    body_timeout_s: float = 30.0  # to receive the whole body (slow senders hold a connection)
    max_prompt_chars: int = 256_000  # characters of message content in one request
    max_per_client: int = 8  # POST requests in flight per client address (queued or generating): a batch
    # Request rate per client address, any route: a token bucket of `burst_per_client` requests
    # refilled at `rate_per_client` a second (0 = no rate limit). A client sending a few requests
    # a second never meets it; one looping on requests is held to the rate.
    rate_per_client: float = 10.0
    burst_per_client: int = 40
    # Extra requests' worth a request costs when its client hangs up before the answer is whole:
    # an abandoned stream still cost a prefill and a batch row, and a client that abandons as a
    # habit (ten a second asking for 1500 tokens) is held to ~rate / (1 + abandon_cost).
    abandon_cost: float = 10.0
    # A refused request (over the rate or over `max_per_client`) is answered after min(its wait,
    # this) seconds: a client looping on refusals (ignoring Retry-After) is slowed to about one a
    # second per connection instead of costing the server (and the machine) hundreds a second.
    # At most `max_per_client` refusals of a client (and `MAX_HELD` in all) are held; more: 429 at once.
    refusal_delay_s: float = 1.0


class RateLimiter:
    """Per-client token buckets: `take(client)` spends one request (or says how long to wait),
    `charge(client, n)` spends `n` more afterwards (a penalty; a bucket owes at most `burst`).

    `clock` is injectable so the buckets can be tested without waiting. At most `max_clients`
    buckets are kept: full ones (that client is idle) go first, then the longest untouched."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic,
                 max_clients: int = 4096):
        if rate < 0 or burst < 1:
            raise GtExtError(f"rate limit: rate {rate} must be >= 0 and burst {burst} >= 1")
        self.rate, self.burst, self.clock, self.max_clients = rate, float(burst), clock, max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, at)

    def _tokens(self, client: str, now: float) -> float:
        tokens, at = self._buckets.get(client, (self.burst, now))
        return min(self.burst, tokens + (now - at) * self.rate)

    def _store(self, client: str, tokens: float, now: float) -> None:
        self._buckets[client] = (max(tokens, -self.burst), now)
        self._buckets.move_to_end(client)
        if len(self._buckets) > self.max_clients:
            for c in [c for c in self._buckets if c != client and self._tokens(c, now) >= self.burst]:
                del self._buckets[c]
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)

    def available(self, client: str) -> float:
        """Requests `client` may send now (negative: it owes; the bucket refills at `rate`)."""
        return self._tokens(client, self.clock())

    def take(self, client: str) -> float:
        """0.0 when `client` may send this request now (one token spent), else the seconds until it may."""
        if not self.rate:
            return 0.0
        now = self.clock()
        tokens = self._tokens(client, now)
        if tokens < 1.0:
            self._store(client, tokens, now)
            return (1.0 - tokens) / self.rate
        self._store(client, tokens - 1.0, now)
        return 0.0

    def charge(self, client: str, cost: float) -> None:
        """Spend `cost` more of `client`'s bucket (it may go into debt, down to -burst)."""
        if self.rate and cost > 0:
            now = self.clock()
            self._store(client, self._tokens(client, now) - cost, now)


def check_token(token: str | None) -> None:
    """Refuse a bearer token too short to resist guessing."""
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise GtExtError(f"API token: at least {MIN_TOKEN_CHARS} characters needed, got {len(token)} "
                         "(make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')")


class ChatRequest(BaseModel):
    """The fields of an OpenAI chat completion request that this server honours."""

    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[dict[str, Any]]
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=10.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    n: int = Field(default=1, ge=1, le=1)
    stream_options: dict[str, Any] | None = None
    adapters: list[str | dict[str, Any]] | None = None
    choices: dict[str, Any] | None = None


def _error(status: int, message: str, param: str | None = None, etype: str = "invalid_request_error"):
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": etype, "param": param}})


class ApiState:
    """What the handlers share: the generator, the batcher, the served model and its names."""

    def __init__(self, generator: Any, model: Any, max_batch: int = 8, max_queue: int = 64,
                 registry_lookup: Any = None, default_max_tokens: int = 256):
        self.gen = generator
        self.model = model
        self.batcher = Batcher(generator, max_batch=max_batch, max_queue=max_queue)
        self.registry_lookup = registry_lookup  # (ref, base_model) -> [adapter folder, parent first] or raises
        self.default_max_tokens = default_max_tokens
        # Adapters the server was started with, by name (folder name) and by path.
        self.named: dict[str, Path] = {}
        for p, _w in model.adapters:
            self.named[Path(p).parent.name if Path(p).name == "adapter" else Path(p).name] = Path(p)

    def models(self) -> list[dict[str, Any]]:
        now = int(time.time())
        data = [{"id": self.model.ref, "object": "model", "created": now, "owned_by": "gastown-finetune",
                 "base_model": self.model.base_model, "role": self.model.role, "kind": "served"}]
        for name in self.named:
            data.append({"id": name, "object": "model", "created": now, "owned_by": "gastown-finetune",
                         "kind": "adapter"})
        for rec in self._registry_records():
            data.append({"id": rec.ref, "object": "model", "created": now, "owned_by": "gastown-finetune",
                         "base_model": rec.base_model, "role": rec.role, "task": rec.task,
                         "kind": "adapter" if rec.task else "role-model"})
        return data

    def _registry_records(self) -> list[Any]:
        from gt_ext.registry import Registry

        try:
            reg = Registry.open()
            try:
                return [r for r in reg.list() if r.base_model == self.model.base_model and r.adapter_dir]
            finally:
                reg.close()
        except Exception as e:  # no registry here: list the served model only
            log.info("registry not listed: %s", e.__class__.__name__)
            return []

    def _lookup(self, ref: str) -> list[Path]:
        """Adapter folders (parent first) for a name the server was started with or a registry ref."""
        if ref in self.named:
            return [self.named[ref]]
        lookup = self.registry_lookup or _registry_stack
        return list(lookup(ref, self.model.base_model))

    def adapters_for(self, req: ChatRequest) -> list[tuple[Path, float]] | None:
        """The adapter stack of a request (None = the server's default)."""
        stack: list[tuple[Path, float]] | None = None
        if req.model != self.model.ref:
            stack = [(p, 1.0) for p in self._lookup(req.model)]
        if req.adapters is not None:
            stack = list(stack or [])
            for i, a in enumerate(req.adapters):
                if isinstance(a, str):
                    ref, _, w = a.partition("=")
                    weight: Any = w or 1.0
                else:
                    ref, weight = a.get("name"), a.get("weight", 1.0)
                if not isinstance(ref, str) or not ref:
                    raise GtExtError(f"adapters[{i}]: needs a name")
                try:
                    weight = float(weight)
                except (TypeError, ValueError):
                    raise GtExtError(f"adapters[{i}]: weight {weight!r} is not a number") from None
                # An extra adapter is the adapter itself (the stack's last folder): its parent is
                # the model it is stacked on, not applied a second time.
                stack.append((self._lookup(ref)[-1], weight))
        return stack


def _registry_stack(ref: str, base_model: str) -> list[Path]:
    """The adapter stack (parent first) of registry model `ref`, which must be on `base_model`.
    Only registry refs: a request never makes the server read a folder it names."""
    from gt_ext.models.refs import from_registry

    try:
        m = from_registry(ref)
    except GtExtError:
        raise GtExtError(f"model {ref!r} is not served here and not in the registry") from None
    if m.base_model != base_model:
        raise GtExtError(f"model {ref!r} is on base {m.base_model}, this server serves {base_model}")
    if not m.adapters:
        raise GtExtError(f"model {ref!r} has no adapter to apply")
    return [a for a, _ in m.adapters]


class _Gate:
    """ASGI middleware in front of every route: token, per-client rate and concurrency, body size
    and time; a client that hangs up before its answer is whole is charged `abandon_cost`.

    Runs before FastAPI reads anything, so an unauthenticated or over-limit request costs no
    parsing; the body it read is handed on to the app unchanged."""

    def __init__(self, app: Any, token: str | None, limits: ApiLimits, rates: RateLimiter,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep):
        self.app = app
        self.expected = f"Bearer {token}".encode() if token else None
        self.limits = limits
        self.inflight: Counter[str] = Counter()
        self.held: Counter[str] = Counter()  # refusals waiting out their delay
        self.rates = rates
        self.sleep = sleep

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if self.expected is not None and not hmac.compare_digest(headers.get(b"authorization", b""), self.expected):
            await _send_error(send, 401, "missing or wrong bearer token (Authorization: Bearer <token>)",
                              "authentication_error")
            return
        client = (scope.get("client") or ("unknown",))[0]
        posting = scope.get("method") in ("POST", "PUT", "PATCH")
        if posting and self.inflight[client] >= self.limits.max_per_client:
            await self._refuse(client, self.limits.refusal_delay_s, send, f"too many requests in flight from "
                               f"{client} (limit {self.limits.max_per_client}); wait for one to finish")
            return
        wait = self.rates.take(client)
        if wait:
            await self._refuse(client, wait, send, f"too many requests from {client} (limit "
                               f"{self.limits.rate_per_client:g} a second, bursts of {self.limits.burst_per_client}; "
                               f"a request abandoned before its answer counts {self.limits.abandon_cost:g} more)")
            return
        if not posting:
            await self.app(scope, receive, send)
            return
        self.inflight[client] += 1
        answered = abandoned = False
        try:
            declared = headers.get(b"content-length", b"0")
            if not declared.isdigit() or int(declared) > self.limits.max_body_bytes:
                await _send_error(send, 413, f"request body larger than {self.limits.max_body_bytes} bytes",
                                  param="body")
                return
            try:
                body = await asyncio.wait_for(_read_body(receive, self.limits.max_body_bytes),
                                              self.limits.body_timeout_s)
            except _BodyTooLarge:
                await _send_error(send, 413, f"request body larger than {self.limits.max_body_bytes} bytes",
                                  param="body")
                return
            except TimeoutError:
                await _send_error(send, 408, f"request body not received within {self.limits.body_timeout_s:g} s")
                return
            except _ClientGone:
                abandoned = True
                return
            replayed = False

            async def replay() -> dict:
                nonlocal replayed, abandoned
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                msg = await receive()  # after the body: waits for http.disconnect
                abandoned = abandoned or (msg["type"] == "http.disconnect" and not answered)
                return msg

            async def sent(msg: dict) -> None:
                nonlocal answered
                if msg["type"] == "http.response.body" and not msg.get("more_body"):
                    answered = True  # a disconnect from now on is the client done reading
                await send(msg)

            await self.app(scope, replay, sent)
        finally:
            self.inflight[client] -= 1
            if self.inflight[client] <= 0:
                del self.inflight[client]
            if abandoned:
                self.rates.charge(client, self.limits.abandon_cost)


    async def _refuse(self, client: str, wait: float, send: Any, why: str) -> None:
        """429 with Retry-After, held for min(wait, refusal_delay_s) first while fewer than
        `max_per_client` refusals of this client (and `MAX_HELD` in all) are held."""
        retry = max(1, math.ceil(wait))
        held = self.held[client] < self.limits.max_per_client and self.held.total() < MAX_HELD
        if held:
            self.held[client] += 1
        try:
            if held:
                await self.sleep(min(wait, self.limits.refusal_delay_s))
            await _send_error(send, 429, f"{why}; retry after {retry} s", "rate_limit_error",
                              headers=[(b"retry-after", str(retry).encode())])
        finally:
            if held:
                self.held[client] -= 1
                if self.held[client] <= 0:
                    del self.held[client]


class _BodyTooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass


async def _read_body(receive: Any, cap: int) -> bytes:
    parts, size = [], 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise _ClientGone
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > cap:
            raise _BodyTooLarge
        parts.append(chunk)
        if not msg.get("more_body"):
            return b"".join(parts)


async def _send_error(send: Any, status: int, message: str, etype: str = "invalid_request_error",
                      param: str | None = None, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """An error answer before the app ran. The connection is closed after it: an unread body (a
    40 MB one, a trickled one) is then dropped by the kernel instead of parsed by the server."""
    body = json.dumps({"error": {"message": message, "type": etype, "param": param}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


async def _wait_disconnect(request: Request) -> None:
    """Return when the client closes the connection (the body was already read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def create_app(generator: Any, model: Any, token: str | None = None, max_batch: int = 8,
               max_queue: int = 64, registry_lookup: Any = None, limits: ApiLimits | None = None,
               clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> FastAPI:
    """The FastAPI app. With `token`, every route needs `Authorization: Bearer <token>`.
    `clock` times the per-client rate buckets (`app.state.rates`) and `sleep` holds a refused
    request (tests pass their own)."""
    check_token(token)
    limits = limits or ApiLimits()
    state = ApiState(generator, model, max_batch=max_batch, max_queue=max_queue, registry_lookup=registry_lookup)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        state.batcher.close()

    app = FastAPI(title="gastown-finetune prompt API", version="1", lifespan=lifespan)
    app.state.api = state
    app.state.rates = RateLimiter(limits.rate_per_client, limits.burst_per_client, clock)
    app.add_middleware(_Gate, token=token, limits=limits, rates=app.state.rates, sleep=sleep)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_request: Request, exc: RequestValidationError):
        err = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        return _error(400, f"{where or 'body'}: {err.get('msg', 'invalid request')}", param=where or None)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model.ref, "backend": generator.backend}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": state.models()}

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest, request: Request):
        try:
            greq = await _validated_request(state, req, limits)
        except GtExtError as e:
            msg = str(e)
            status = 404 if "not served here" in msg else 400
            return _error(status, msg, param=_param_of(msg))
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        job = Job(greq, lambda p: loop.call_soon_threadsafe(q.put_nowait, ("piece", p)),
                  lambda e: loop.call_soon_threadsafe(q.put_nowait, ("done", e)),
                  client=(request.client.host if request.client else "unknown"))
        try:
            state.batcher.submit(job)
        except GtExtError as e:
            return _error(503, str(e), etype="server_busy")
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if req.stream:
            include_usage = bool((req.stream_options or {}).get("include_usage"))
            return StreamingResponse(_sse(q, greq, cid, created, req.model, include_usage),
                                     media_type="text/event-stream")
        collect = asyncio.ensure_future(_collect(q))
        gone = asyncio.ensure_future(_wait_disconnect(request))
        try:
            await asyncio.wait({collect, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not collect.done():  # the client went away (or we are shutting down): stop generating
                greq.cancel.set()
                collect.cancel()
            gone.cancel()
        if not collect.done() or collect.cancelled():
            return _error(499, "client closed the request", etype="client_closed")
        text, err = collect.result()
        if err is not None:
            status = 400 if isinstance(err, GtExtError) else 500
            return _error(status, str(err) if status == 400 else "generation failed", etype="server_error"
                          if status == 500 else "invalid_request_error")
        st = greq.stats
        return {"id": cid, "object": "chat.completion", "created": created, "model": req.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": st.finish_reason or "stop"}],
                "usage": _usage(st)}

    return app


async def _validated_request(state: ApiState, req: ChatRequest, limits: ApiLimits) -> Any:
    """The generator Request for `req`, every limit checked (GtExtError naming the field otherwise)."""
    from gt_ext.serve.generate import check_messages

    gen = state.gen
    check_messages(req.messages)
    chars = sum(len(m["content"]) for m in req.messages)
    if chars > limits.max_prompt_chars:
        raise GtExtError(f"messages: {chars} characters of content; the limit is {limits.max_prompt_chars}")
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    requested = req.max_completion_tokens or req.max_tokens
    # Validate the cheap fields before tokenizing (a bad seed or stop list costs nothing).
    SamplingParams(max_new_tokens=1, temperature=req.temperature, top_p=req.top_p, top_k=req.top_k,
                   repetition_penalty=req.repetition_penalty, stop=stop, seed=req.seed, choices=req.choices or {})
    ctx = int(gen.max_context)
    if requested is not None and requested > ctx:
        raise GtExtError(f"max_tokens: {requested} exceeds the model's context of {ctx} tokens")
    prompt_tokens = await asyncio.to_thread(gen.count_tokens, req.messages)
    room = ctx - prompt_tokens
    if room < 1:
        raise GtExtError(f"messages: the prompt is {prompt_tokens} tokens, the model's context is {ctx}")
    if requested is not None and requested > room:
        raise GtExtError(f"max_tokens: prompt is {prompt_tokens} tokens; with max_tokens {requested} it exceeds "
                         f"the model's context of {ctx}")
    params = SamplingParams(max_new_tokens=requested or min(state.default_max_tokens, room),
                            temperature=req.temperature, top_p=req.top_p, top_k=req.top_k,
                            repetition_penalty=req.repetition_penalty, stop=stop, seed=req.seed,
                            choices=req.choices or {})
    return gen.request(req.messages, params, state.adapters_for(req))


def _param_of(message: str) -> str | None:
    head, _, rest = message.partition(":")
    if head == "sampling":  # "sampling: seed must be ...", "sampling: choices['action'] must ..."
        head = rest.split()[0].split("[")[0].rstrip(":") if rest.split() else head
    return head if head.replace("_", "").replace(".", "").replace("[", "").replace("]", "").isalnum() else None


async def _collect(q: asyncio.Queue) -> tuple[str, BaseException | None]:
    text = ""
    while True:
        kind, val = await q.get()
        if kind == "piece":
            text += val
        else:
            return text, val


def _usage(st: Any) -> dict[str, int]:
    return {"prompt_tokens": st.prompt_tokens, "completion_tokens": st.completion_tokens,
            "total_tokens": st.prompt_tokens + st.completion_tokens}


async def _sse(q: asyncio.Queue, greq: Any, cid: str, created: int, model: str, include_usage: bool):
    def chunk(delta: dict[str, Any], finish: str | None = None, usage: dict | None = None) -> str:
        obj: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        if usage is not None:
            obj["choices"] = []
            obj["usage"] = usage
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    finished = False
    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            kind, val = await q.get()
            if kind == "piece":
                yield chunk({"content": val})
                continue
            finished = True
            if val is not None:
                msg = str(val) if isinstance(val, GtExtError) else "generation failed"
                yield f"data: {json.dumps({'error': {'message': msg, 'type': 'server_error'}})}\n\n"
            else:
                yield chunk({}, greq.stats.finish_reason or "stop")
                if include_usage:
                    yield chunk({}, usage=_usage(greq.stats))
            break
        yield "data: [DONE]\n\n"
    finally:
        if not finished:  # the client went away mid-stream: free its batch row
            greq.cancel.set()
