"""Generation: chat messages in, text out, on a base model plus any stack of weighted LoRA adapters.

    g = Generator("smollm2-135m-instruct", adapters=[("runs/witness/adapter", 1.0)])
    g.chat([{"role": "user", "content": "What is 2+2?"}], SamplingParams(max_new_tokens=32))
    for piece in g.stream(messages, SamplingParams(temperature=0.7, seed=1), adapters=[]):  # base only
        ...

Every backend runs under one continuous-batching loop (`gt_ext.serve.scheduler.DecodeLoop`):
requests join and leave the running batch between decode steps, each with its own sampling,
stop strings and adapter stack. The PyTorch engine is a lean LLaMA forward over the base model's
weights (`gt_ext.serve.llama_decoder`: slot KV cache, fused projections, optional int8, LoRA per
row); `backend="llama.cpp"` runs the same API on a GGUF through llama-cpp-python, one request at a
time (see `gt_ext.serve.llamacpp`); `backend="pipeline"` runs the model's layers on node0 stage
servers, one generation session per row (see `gt_ext.serve.pipeline`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gt_ext.errors import GtExtError
from gt_ext.serve.params import SamplingParams
from gt_ext.serve.scheduler import DecodeLoop

log = logging.getLogger(__name__)

Message = dict[str, Any]
AdapterSpec = Sequence[tuple[str | Path, float]]
MESSAGE_ROLES = ("system", "user", "assistant", "tool")
BACKENDS = ("torch", "llama.cpp", "pipeline")


@dataclass
class GenerationStats:
    """What one request cost: filled in by `stream`/`chat` when passed as `stats=`."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float = 0.0  # time from the call to the first generated token
    total_s: float = 0.0
    finish_reason: str = ""  # "stop" (EOS or a stop string) or "length"


@dataclass
class Request:
    """One sequence of a batch: its prompt, sampling and adapters (key, weight)."""

    messages: list[Message]
    params: SamplingParams
    adapters: list[tuple[str, float]] = field(default_factory=list)
    stats: GenerationStats = field(default_factory=GenerationStats)
    cancel: threading.Event = field(default_factory=threading.Event)  # set: stop generating this one


def check_messages(messages: Any, where: str = "messages") -> list[Message]:
    """Validate an OpenAI-style message list; raise `GtExtError` naming the first bad entry."""
    if not isinstance(messages, list) or not messages:
        raise GtExtError(f"{where}: must be a non-empty list of {{role, content}} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise GtExtError(f"{where}[{i}]: must be an object with role and content")
        if m.get("role") not in MESSAGE_ROLES:
            raise GtExtError(f"{where}[{i}].role: must be one of {', '.join(MESSAGE_ROLES)}, got {m.get('role')!r}")
        if not isinstance(m.get("content"), str):
            raise GtExtError(f"{where}[{i}].content: must be a string")
    return messages


class Generator:
    """A loaded base model that answers chats, with stackable adapters chosen per call.

    `adapters` given here are the default for every call; `chat`/`stream` take `adapters=` to use a
    different stack for one request (`[]` = base model only). All calls share one decode loop
    (`self.loop`, stepped under `self.lock`): `stream_batch` decodes several requests together, and
    requests from other threads (the API's batcher) join the same running batch.
    """

    def __init__(
        self,
        base_model: str,
        adapters: AdapterSpec = (),
        *,
        backend: str = "torch",
        gguf_path: str | Path | None = None,
        quantize: str | None = None,
        threads: int | None = None,
        decode_threads: int | None = 1,
        device: str = "cpu",
        max_batch: int = 8,
        pipeline: Any = None,
    ):
        """`pipeline`: where the stages are (`gt_ext.serve.pipeline.PipelineTarget`), for that backend."""
        if backend not in BACKENDS:
            raise GtExtError(f"unknown backend {backend!r}: backends are {', '.join(BACKENDS)}")
        self.base_model = base_model
        self.backend = backend
        self.lock = threading.Lock()
        if backend == "llama.cpp":
            from gt_ext.serve.llamacpp import LlamaCppEngine

            self._engine: Any = LlamaCppEngine(base_model, gguf_path=gguf_path, threads=threads)
        elif backend == "pipeline":
            from gt_ext.serve.pipeline import PipelineEngine

            self._engine = PipelineEngine(base_model, pipeline, max_slots=max_batch + 2)
        else:
            # Two rows beyond max_batch: fair admission lets a client with nothing running join a
            # full batch (gt_ext.serve.batcher).
            self._engine = TorchEngine(base_model, quantize=quantize, device=device, prefill_threads=threads,
                                       decode_threads=decode_threads, max_slots=max_batch + 2)
        self.tokenizer = self._engine.tokenizer
        chunk = getattr(self._engine, "prefill_chunk", 256)  # a message-size limit for the pipeline
        self.loop = DecodeLoop(self._engine, self.render, max_batch=max_batch, prefill_chunk=chunk,
                               prefill_budget=chunk)
        self.default_adapters = self.load_adapters(adapters)

    def close(self) -> None:
        """Release what the engine holds outside this process (the pipeline backend leaves the
        swarm); the in-process engines need nothing."""
        close = getattr(self._engine, "close", None)
        if close is not None:
            close()

    # -- adapters ---------------------------------------------------------------------------
    def load_adapters(self, adapters: AdapterSpec) -> list[tuple[str, float]]:
        """Load (once) each adapter folder and return [(key, weight)] for use in a request."""
        out = []
        for item in adapters:
            try:
                path, weight = item
                weight = float(weight)
            except (TypeError, ValueError):
                raise GtExtError(f"adapter {item!r}: expected (path, weight)") from None
            known = self._known_key(path)
            if known is None:
                known = self._engine.add_adapter(path)
            out.append((known, weight))
        return out

    def _known_key(self, path: str | Path) -> str | None:
        try:
            from gt_ext.models.refs import adapter_folder

            key = str(adapter_folder(path).resolve())
        except GtExtError:
            return None
        return key if key in self._engine.adapter_keys() else None

    @property
    def max_context(self) -> int:
        """The model's context length in tokens (prompt + generated)."""
        return int(self._engine.max_context)

    @property
    def loaded_adapters(self) -> list[str]:
        """Keys (resolved folders) of every adapter loaded so far."""
        return self._engine.adapter_keys()

    # -- prompts ----------------------------------------------------------------------------
    def render(self, messages: list[Message]) -> str:
        """The prompt text the model sees: the chat template with the assistant turn opened."""
        check_messages(messages)
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def count_tokens(self, text_or_messages: str | list[Message]) -> int:
        """Token count of a text, or of the rendered prompt of a message list."""
        text = text_or_messages if isinstance(text_or_messages, str) else self.render(text_or_messages)
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # -- generation -------------------------------------------------------------------------
    def chat(
        self,
        messages: list[Message],
        params: SamplingParams | None = None,
        adapters: AdapterSpec | None = None,
        stats: GenerationStats | None = None,
    ) -> str:
        """Generate the assistant's reply to `messages` and return it whole."""
        return "".join(self.stream(messages, params, adapters=adapters, stats=stats))

    def stream(
        self,
        messages: list[Message],
        params: SamplingParams | None = None,
        adapters: AdapterSpec | None = None,
        stats: GenerationStats | None = None,
    ) -> Iterator[str]:
        """Yield the reply as it is generated (stop strings are never shown, even partly)."""
        req = self.request(messages, params, adapters)
        for _row, piece in self.stream_batch([req]):
            yield piece
        if stats is not None:
            stats.__dict__.update(req.stats.__dict__)

    def request(
        self, messages: list[Message], params: SamplingParams | None = None, adapters: AdapterSpec | None = None
    ) -> Request:
        """Build a validated `Request` (adapters loaded now, so errors surface before generating)."""
        check_messages(messages)
        params = (params or SamplingParams()).validate()
        ads = self.default_adapters if adapters is None else self.load_adapters(adapters)
        return Request(messages=messages, params=params, adapters=list(ads))

    def stream_batch(self, requests: list[Request]) -> Iterator[tuple[int, str]]:
        """Decode several requests together; yield (index, text piece). Each request's stats are filled.

        They join the generator's running batch (with any other thread's requests) and the loop is
        stepped here until all of them are done; a bad request raises before anything runs."""
        out: deque[tuple[int, str]] = deque()
        errors: list[BaseException | None] = [None] * len(requests)
        done = [False] * len(requests)

        def sink(i: int):
            def on_done(err: BaseException | None) -> None:
                done[i], errors[i] = True, err
            return (lambda piece: out.append((i, piece))), on_done

        with self.lock:
            added: list[Request] = []
            try:
                for i, r in enumerate(requests):
                    self.loop.add(r, *sink(i))
                    added.append(r)
                while not all(done):
                    self.loop.step()
                    while out:
                        yield out.popleft()
                while out:
                    yield out.popleft()
            finally:
                for r, d in zip(requests, done, strict=False):
                    if r in added and not d:  # abandoned (or failed): leave the batch at the next step
                        r.cancel.set()
        failed = next((e for e in errors if e is not None), None)
        if failed is not None:
            raise failed


class TorchEngine:
    """The PyTorch backend: `LlamaDecoder` (slot KV cache, fused projections, LoRA per row) driven
    by the `DecodeLoop`'s start / prefill / decode / finish calls."""

    def __init__(self, base_model: str, quantize: str | None = None, device: str = "cpu",
                 prefill_threads: int | None = None, decode_threads: int | None = 1, max_slots: int = 10):
        from gt_ext.models import load_model
        from gt_ext.serve.llama_decoder import LlamaDecoder

        # Decode steps are small ops (a few rows x 1 token): on a busy machine a second intra-op
        # thread made a step 4x slower, on an idle one int8 steps ran 1.4x faster on 2 (bench/serve.py,
        # docs/serve.md); the loader passes the deployment's choice to both. prefill_threads None =
        # torch's count; decode_threads None = the same.
        self.decode_threads = decode_threads
        self.prefill_threads = prefill_threads
        model, self.tokenizer = load_model(base_model, device=device)
        self.decoder = LlamaDecoder(model, quantize=None if quantize in ("", "none") else quantize,
                                    max_slots=max_slots, device=device)
        self.config = model.config
        self.eos_ids = _eos_ids(model, self.tokenizer)
        del model  # the decoder holds its own (fused, maybe int8) copy of the weights
        self.max_context = self.decoder.max_len
        self.max_slots = max_slots
        self._by_slot: dict[int, Any] = {}  # slot -> its Sequence
        self._lora_rows: tuple = ()
        self._lora: dict = {}

    def add_adapter(self, path: str | Path) -> str:
        return self.decoder.adapters.add(path)

    def adapter_keys(self) -> list[str]:
        return list(self.decoder.adapters.adapters)

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def start(self, seq: Any) -> None:
        seq.slot = self.decoder.cache.claim()
        self._by_slot[seq.slot] = seq

    def prefill(self, seq: Any, ids: list[int]) -> torch.Tensor:
        return self.prefill_many([seq], [ids])[0]

    def prefill_many(self, seqs: list[Any], chunks: list[list[int]]) -> torch.Tensor:
        lora = self.decoder.adapters.batch([seq.request.adapters for seq in seqs])
        with _threads(self.prefill_threads):
            return self.decoder.prefill_many([seq.slot for seq in seqs], chunks, lora)

    def decode(self, seqs: list[Any], ids: list[int]) -> torch.Tensor:
        order = sorted(range(len(seqs)), key=lambda i: seqs[i].slot)  # slots 0..n-1 read as views
        rows = tuple((seqs[i].slot, id(seqs[i])) for i in order)
        if rows != self._lora_rows:  # the batch changed: the rows' adapter weights change
            self._lora_rows = rows
            self._lora = self.decoder.adapters.batch([seqs[i].request.adapters for i in order])
        with _threads(self.decode_threads):
            logits = self.decoder.decode([seqs[i].slot for i in order], [ids[i] for i in order], self._lora)
        if order == sorted(order):
            return logits
        back = torch.empty_like(logits)
        back[torch.tensor(order)] = logits
        return back

    def finish(self, seq: Any) -> None:
        if seq.slot is None:
            return
        moved = self.decoder.cache.release(seq.slot)
        del self._by_slot[seq.slot]
        if moved is not None:  # the last slot's sequence now lives in the freed one
            other = self._by_slot.pop(moved)
            other.slot = seq.slot
            self._by_slot[seq.slot] = other
        seq.slot = None
        self._lora_rows = ()


@contextlib.contextmanager
def _threads(n: int | None):
    """torch's intra-op thread count set to `n` for a block (unchanged when None)."""
    if not n:
        yield
        return
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _eos_ids(model: Any, tok: Any) -> set[int]:
    ids: set[int] = set()
    for src in (getattr(model, "generation_config", None), model.config, tok):
        v = getattr(src, "eos_token_id", None)
        if isinstance(v, int):
            ids.add(v)
        elif isinstance(v, list | tuple):
            ids.update(int(x) for x in v)
    im_end = tok.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tok.get_vocab() else None
    if im_end is not None:
        ids.add(int(im_end))
    return ids
