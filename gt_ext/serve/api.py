"""OpenAI-compatible prompt API: `/v1/chat/completions` (with SSE streaming) and `/v1/models`.

    app = create_app(generator, model, token=None)    # then uvicorn on 127.0.0.1

Extensions to OpenAI's request: `top_k`, `repetition_penalty`, and `adapters` (a list of
`"REF"` / `"REF=WEIGHT"` / `{"name", "weight"}`; REF is a registry model or an adapter the server
was started with; `[]` = base model only) to pick the adapter stack per request. A request whose
`model` names another registry model on the same base is served with that model's adapter, also
without reloading the base. Bad requests get 4xx with `{"error": {"message", "type", "param"}}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import uuid
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
        try:
            from gt_ext.registry import Registry

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
                stack.extend((p, weight) for p in self._lookup(ref))
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


def create_app(generator: Any, model: Any, token: str | None = None, max_batch: int = 8,
               max_queue: int = 64, registry_lookup: Any = None) -> FastAPI:
    """The FastAPI app. With `token`, every /v1 request needs `Authorization: Bearer <token>`."""
    state = ApiState(generator, model, max_batch=max_batch, max_queue=max_queue, registry_lookup=registry_lookup)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        state.batcher.close()

    app = FastAPI(title="gastown-finetune prompt API", version="1", lifespan=lifespan)
    app.state.api = state

    @app.middleware("http")
    async def auth(request: Request, call_next):
        if token and request.url.path.startswith("/v1"):
            got = request.headers.get("authorization", "")
            if not hmac.compare_digest(got.encode(), f"Bearer {token}".encode()):
                return _error(401, "missing or wrong bearer token (Authorization: Bearer <token>)",
                              etype="authentication_error")
        return await call_next(request)

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
    async def chat(req: ChatRequest):
        try:
            params = SamplingParams(
                max_new_tokens=req.max_completion_tokens or req.max_tokens or state.default_max_tokens,
                temperature=req.temperature, top_p=req.top_p, top_k=req.top_k,
                repetition_penalty=req.repetition_penalty,
                stop=[req.stop] if isinstance(req.stop, str) else list(req.stop or []), seed=req.seed)
            stack = state.adapters_for(req)
            greq = generator.request(req.messages, params, stack)
        except GtExtError as e:
            msg = str(e)
            status = 404 if "not served here" in msg else 400
            return _error(status, msg)
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        job = Job(greq, lambda p: loop.call_soon_threadsafe(q.put_nowait, ("piece", p)),
                  lambda e: loop.call_soon_threadsafe(q.put_nowait, ("done", e)))
        try:
            state.batcher.submit(job)
        except GtExtError as e:
            return _error(503, str(e), etype="server_busy")
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if req.stream:
            include_usage = bool((req.stream_options or {}).get("include_usage"))
            return StreamingResponse(_sse(q, greq, cid, created, req.model, include_usage),
                                     media_type="text/event-stream")
        text = ""
        while True:
            kind, val = await q.get()
            if kind == "piece":
                text += val
            elif val is not None:
                status = 400 if isinstance(val, GtExtError) else 500
                return _error(status, str(val) if status == 400 else "generation failed", etype="server_error"
                              if status == 500 else "invalid_request_error")
            else:
                break
        st = greq.stats
        return {"id": cid, "object": "chat.completion", "created": created, "model": req.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": st.finish_reason or "stop"}],
                "usage": _usage(st)}

    return app


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

    yield chunk({"role": "assistant", "content": ""})
    while True:
        kind, val = await q.get()
        if kind == "piece":
            yield chunk({"content": val})
            continue
        if val is not None:
            msg = str(val) if isinstance(val, GtExtError) else "generation failed"
            yield f"data: {json.dumps({'error': {'message': msg, 'type': 'server_error'}})}\n\n"
        else:
            yield chunk({}, greq.stats.finish_reason or "stop")
            if include_usage:
                yield chunk({}, usage=_usage(greq.stats))
        break
    yield "data: [DONE]\n\n"
