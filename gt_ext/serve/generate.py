"""Generation: chat messages in, text out, on a base model plus any stack of weighted LoRA adapters.

    g = Generator("smollm2-135m-instruct", adapters=[("runs/witness/adapter", 1.0)])
    g.chat([{"role": "user", "content": "What is 2+2?"}], SamplingParams(max_new_tokens=32))
    for piece in g.stream(messages, SamplingParams(temperature=0.7, seed=1), adapters=[]):  # base only
        ...

The PyTorch path runs its own decode loop over the model's forward with a KV cache (prefill once,
then one token a step, logits only for the last position), so per-request adapters, per-row sampling
and batches of concurrent requests share one loaded base model. `backend="llama.cpp"` runs the same
API on a GGUF through llama-cpp-python (see `gt_ext.serve.llamacpp`); `backend="pipeline"` runs the
model's layers on node0 stage servers and samples here (see `gt_ext.serve.pipeline`). The torch and
pipeline loops share the per-row work (sampling, EOS, stop strings, stats): `DecodeRows`.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gt_ext.errors import GtExtError
from gt_ext.serve.params import SamplingParams
from gt_ext.serve.sampling import next_token
from gt_ext.serve.stops import StopScanner

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
    different stack for one request (`[]` = base model only). Calls are serialised by a lock; use
    `stream_batch` (or the API server, which batches) to decode several requests in one pass.
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
        pipeline: Any = None,
    ):
        """`pipeline`: where the stages are (`gt_ext.serve.pipeline.PipelineTarget`), for that backend."""
        if backend not in BACKENDS:
            raise GtExtError(f"unknown backend {backend!r}: backends are {', '.join(BACKENDS)}")
        self.base_model = base_model
        self.backend = backend
        self._lock = threading.Lock()
        if backend == "llama.cpp":
            from gt_ext.serve.llamacpp import LlamaCppEngine

            self._engine: Any = LlamaCppEngine(base_model, gguf_path=gguf_path, threads=threads)
        elif backend == "pipeline":
            from gt_ext.serve.pipeline import PipelineEngine

            self._engine = PipelineEngine(base_model, pipeline)
        else:
            self._engine = TorchEngine(base_model, quantize=quantize, device=device, prefill_threads=threads,
                                       decode_threads=decode_threads)
        self.tokenizer = self._engine.tokenizer
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
                # Hooks must not be added while a batch is running forward: wait for it.
                with self._lock:
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
        """Decode several requests together; yield (index, text piece). Each request's stats are filled."""
        with self._lock:
            yield from self._engine.run(requests, self.render)


class TorchEngine:
    """The PyTorch backend: transformers' model forward + our KV-cached decode loop + LoRA hooks."""

    def __init__(self, base_model: str, quantize: str | None = None, device: str = "cpu",
                 prefill_threads: int | None = None, decode_threads: int | None = 1):
        from gt_ext.models import load_model
        from gt_ext.serve.adapter_stack import LoraRuntime

        # Decode steps are tiny ops (B rows x 1 token): on CPU, intra-op threads mostly wait for each
        # other, and on a busy machine a second thread made a step 4x slower (bench/serve.py,
        # docs/serve.md). prefill_threads None = torch's count; decode_threads None = the same.
        self.decode_threads = decode_threads
        self.prefill_threads = prefill_threads

        self.model, self.tokenizer = load_model(base_model, device=device)
        self.device = device
        if quantize == "int8":
            # Dynamic int8 linears: a quarter of the fp32 weight traffic per token on CPU.
            with warnings.catch_warnings():  # torch.ao's own deprecation notice, once per load
                warnings.simplefilter("ignore", category=UserWarning)
                warnings.simplefilter("ignore", category=DeprecationWarning)
                self.model = torch.ao.quantization.quantize_dynamic(self.model, {torch.nn.Linear}, dtype=torch.qint8)
        elif quantize not in (None, "", "none"):
            raise GtExtError(f"unknown quantize mode {quantize!r}: use int8 or none")
        self.lora = LoraRuntime(self.model)
        self.max_context = int(getattr(self.model.config, "max_position_embeddings", 2048))
        self.eos_ids = _eos_ids(self.model, self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eos_ids)

    def add_adapter(self, path: str | Path) -> str:
        return self.lora.add(path)

    def adapter_keys(self) -> list[str]:
        return list(self.lora.adapters)

    @torch.inference_mode()
    def run(self, requests: list[Request], render) -> Iterator[tuple[int, str]]:
        """Prefill all prompts (left-padded), then decode one token per row per step until all stop."""
        t0 = time.perf_counter()
        prompts = [self.tokenizer(render(r.messages), add_special_tokens=False)["input_ids"] for r in requests]
        check_prompt_lengths(requests, prompts, self.max_context)
        n, width = len(requests), max(len(p) for p in prompts)
        input_ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, ids in enumerate(prompts):
            input_ids[i, width - len(ids) :] = torch.tensor(ids)
            mask[i, width - len(ids) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [B, T]: left padding does not shift RoPE
        rows = DecodeRows(requests, prompts, self.eos_ids, self._decode, t0)
        self.lora.activate([r.adapters for r in requests])
        saved_threads = torch.get_num_threads()
        if self.prefill_threads:
            torch.set_num_threads(self.prefill_threads)
        try:
            from transformers import DynamicCache

            cache = DynamicCache()
            logits = self._forward(input_ids, mask, positions, cache)  # [B, V]
            if self.decode_threads:
                torch.set_num_threads(self.decode_threads)
            step = 0
            while True:
                nxt = torch.full((n, 1), self.pad_id, dtype=torch.long)
                for i in range(n):
                    tok, piece = rows.sample(i, logits[i], step)
                    if tok is not None:
                        nxt[i, 0] = tok
                    if piece:
                        yield i, piece
                step += 1
                if all(rows.done):
                    break
                mask = torch.cat([mask, torch.ones((n, 1), dtype=torch.long)], dim=1)
                positions = positions[:, -1:] + 1
                logits = self._forward(nxt, mask, positions, cache)
        finally:
            torch.set_num_threads(saved_threads)
            self.lora.deactivate()

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any) -> torch.Tensor:
        # A single row never has padding: skipping the mask saves building a 4-D mask every step.
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device) if ids.shape[0] > 1 else None,
            position_ids=positions.to(self.device),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,  # lm_head only on the last position: [B, 1, V]
        )
        return out.logits[:, -1, :].float().cpu()

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


class DecodeRows:
    """The per-row side of a decode loop over a batch of requests: sampling, EOS, stop strings,
    text pieces and stats. The engine computes logits; `sample` turns a row's logits into its next
    token (None once the row is done) and the text to show now."""

    def __init__(self, requests: list[Request], prompts: list[list[int]], eos_ids: set[int], decode: Any,
                 t0: float):
        self.requests, self.eos_ids, self.decode, self.t0 = requests, eos_ids, decode, t0
        self.gens = [_generator(r.params.seed) for r in requests]
        self.seen = [torch.tensor(p, dtype=torch.long) for p in prompts]
        self.out_ids: list[list[int]] = [[] for _ in requests]
        self.scanners = [StopScanner(r.params.stop) for r in requests]
        self.done = [False] * len(requests)

    def sample(self, i: int, logits: torch.Tensor, step: int) -> tuple[int | None, str]:
        """Row i's next token from its next-token logits [V] and the text piece to yield; the token is
        None when the row is (or just got) done, and a done row is left as it is."""
        r = self.requests[i]
        if self.done[i]:
            return None, ""
        if r.cancel.is_set():  # its client went away: free the row
            self.done[i], r.stats.finish_reason = True, "cancelled"
            return None, ""
        tok: int | None = next_token(logits, r.params, self.seen[i], self.gens[i])
        if step == 0:
            r.stats.ttft_s = time.perf_counter() - self.t0
        if tok in self.eos_ids:
            self.done[i], tok = True, None
            r.stats.finish_reason = "stop"
            piece = self.scanners[i].feed(self.decode(self.out_ids[i]), final=True)
        else:
            self.out_ids[i].append(tok)
            if r.params.repetition_penalty != 1.0:
                self.seen[i] = torch.cat([self.seen[i], torch.tensor([tok])])
            last = len(self.out_ids[i]) >= r.params.max_new_tokens
            piece = self.scanners[i].feed(self.decode(self.out_ids[i]), final=last)
            if self.scanners[i].stopped:
                self.done[i], r.stats.finish_reason = True, "stop"
            elif last:
                self.done[i], r.stats.finish_reason = True, "length"
            if self.done[i]:
                tok = None
        r.stats.completion_tokens = len(self.out_ids[i])
        if self.done[i]:
            r.stats.total_s = time.perf_counter() - self.t0
        return tok, piece


def check_prompt_lengths(requests: list[Request], prompts: list[list[int]], max_context: int) -> None:
    """Each prompt plus its max_new_tokens fits the context (else a one-line error naming the request);
    records the prompt sizes in the stats."""
    for i, (r, ids) in enumerate(zip(requests, prompts, strict=True)):
        if len(ids) + r.params.max_new_tokens > max_context:
            raise GtExtError(
                f"request {i}: prompt is {len(ids)} tokens; with max_new_tokens {r.params.max_new_tokens} "
                f"it exceeds the model's context of {max_context}"
            )
        r.stats.prompt_tokens = len(ids)


def _generator(seed: int | None) -> torch.Generator:
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(int(seed))
    return g


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
