"""Continuous batching: requests join and leave the running batch between decode steps.

    loop = DecodeLoop(engine, render, max_batch=8)
    loop.add(request, on_piece=print, on_done=lambda err: ...)   # joins at the next step
    while not loop.idle:
        loop.step()

One `step()`:
1. drops cancelled requests (their client went away) and frees their rows;
2. admits waiting requests while rows are free, and prefills them in fixed chunks of the prompt
   (`prefill_chunk` tokens; at most `prefill_budget` prompt tokens per step, so a long prompt delays
   the running rows by a bounded amount, and a prompt's chunks never depend on other requests);
   a fully prefilled request samples its first token;
3. decodes one token for every running request in one forward, samples each row (its own
   temperature, top-k/p, repetition penalty, seed; a row with `choices` first masks the tokens
   that would take a listed JSON field off its list, gt_ext.serve.choices), detokenizes
   incrementally, cuts stop strings, and finishes rows at EOS, a stop string or `max_new_tokens`.
   Finished rows leave at once.

The engine is anything with `tokenize(text)`, `eos_ids`, `max_context`, `max_slots`, `start(seq)`
(claim a row), `prefill(seq, ids) -> logits [V] | None`, `decode(seqs, ids) -> logits [n, V]` and
`finish(seq)`, and optionally `prefill_many(seqs, chunks) -> logits [k, V]` (one forward for
several sequences' chunks); sampling, stops and bookkeeping live here, shared by every engine.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from gt_ext.errors import GtExtError
from gt_ext.serve.choices import allowed_tokens, token_texts
from gt_ext.serve.detok import Detokenizer
from gt_ext.serve.sampling import next_token
from gt_ext.serve.stops import StopScanner

log = logging.getLogger(__name__)

OnPiece = Callable[[str], None]
OnDone = Callable[[BaseException | None], None]


@dataclass
class Sequence:
    """A request inside the loop: its prompt ids, progress, and the engine's row (`slot`)."""

    request: Any  # generate.Request
    prompt: list[int]
    on_piece: OnPiece
    on_done: OnDone
    t0: float
    detok: Detokenizer
    scanner: StopScanner
    rng: torch.Generator | None
    seen: torch.Tensor | None  # prompt + output ids, for the repetition penalty
    prefilled: int = 0  # prompt tokens already in the engine's cache
    pending: int | None = None  # sampled, not yet fed to the model
    slot: Any = None  # the engine's handle for this row
    n_out: int = 0
    finished: bool = False
    extra: dict = field(default_factory=dict)  # engine-private state


class DecodeLoop:
    """The running batch of one engine. Not thread-safe: one thread steps it (callers lock)."""

    def __init__(self, engine: Any, render: Callable[[list], str], max_batch: int = 8,
                 prefill_chunk: int = 256, prefill_budget: int = 256):
        self.engine = engine
        self.render = render
        self.max_batch = max_batch
        self.prefill_chunk = prefill_chunk
        self.prefill_budget = prefill_budget
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # rows in the engine (prefilling or decoding)

    @property
    def idle(self) -> bool:
        """No request waiting or running."""
        return not self.waiting and not self.running

    @property
    def free_rows(self) -> int:
        """Rows a new request could take at the next step (the engine's capacity left)."""
        return max(0, min(self.max_batch, self.engine.max_slots) - len(self.running) - len(self.waiting))

    def add(self, request: Any, on_piece: OnPiece, on_done: OnDone, extra_row: bool = False) -> None:
        """Queue `request`; it joins the batch at the next step with a free row. Raises `GtExtError`
        (and queues nothing) when the prompt does not fit the model's context. `extra_row`: this
        request may take a row beyond `max_batch` (up to the engine's slots): fair admission."""
        ids = self.engine.tokenize(self.render(request.messages))
        p = request.params
        if len(ids) + p.max_new_tokens > self.engine.max_context:
            raise GtExtError(f"prompt is {len(ids)} tokens; with max_new_tokens {p.max_new_tokens} it exceeds "
                             f"the model's context of {self.engine.max_context}")
        request.stats.prompt_tokens = len(ids)
        rng = None
        if not p.greedy:
            rng = torch.Generator()
            if p.seed is None:
                rng.seed()
            else:
                rng.manual_seed(int(p.seed))
        seen = torch.tensor(ids, dtype=torch.long) if p.repetition_penalty != 1.0 else None
        seq = Sequence(request, ids, on_piece, on_done, time.perf_counter(), Detokenizer(self.engine.tokenizer),
                       StopScanner(p.stop), rng, seen)
        seq.extra["extra_row"] = extra_row
        self.waiting.append(seq)

    def step(self) -> None:
        """Admit, prefill, decode one token per running row (see the module doc)."""
        for seq in [s for s in (*self.running, *self.waiting) if s.request.cancel.is_set()]:
            self._finish(seq, "cancelled")
        try:
            self._admit()
            self._prefill()
            decoding = [s for s in self.running if s.pending is not None]
            if decoding:
                logits = self.engine.decode(decoding, [s.pending for s in decoding])  # [n, V]
                for s in decoding:
                    s.pending = None
                self._sample(decoding, logits)
        except Exception as e:  # a failed forward fails the rows it held; the loop stays usable
            log.warning("decode step failed: %s", e.__class__.__name__)
            for seq in list(self.running):
                self._finish(seq, "error", e)
            raise

    def fail_all(self, err: BaseException) -> None:
        """Finish every waiting and running request with `err` (shutting down)."""
        for seq in [*self.running, *self.waiting]:
            self._finish(seq, "error", err)

    # ------------------------------------------------------------------------------------------ steps
    def _admit(self) -> None:
        cap = min(self.max_batch, self.engine.max_slots)
        while self.waiting:
            seq = self.waiting[0]
            limit = self.engine.max_slots if seq.extra.get("extra_row") else cap
            if len(self.running) >= limit:
                break
            self.waiting.popleft()
            self.engine.start(seq)
            self.running.append(seq)

    def _prefill(self) -> None:
        budget = self.prefill_budget
        todo: list[tuple[Sequence, list[int]]] = []
        for seq in [s for s in self.running if s.prefilled < len(s.prompt)]:
            # Chunks start at multiples of prefill_chunk: the same for this prompt whatever else runs.
            chunk = seq.prompt[seq.prefilled : seq.prefilled + self.prefill_chunk]
            if len(chunk) > budget and budget < self.prefill_budget:
                break  # the next step continues (something was prefilled already)
            budget -= len(chunk)
            todo.append((seq, chunk))
        if not todo:
            return
        # An engine that can prefill several sequences in one forward gets this step's chunks at
        # once (one pass over the weights); the others take them one by one.
        many = getattr(self.engine, "prefill_many", None)
        if many is not None and len(todo) > 1:
            logits = many([seq for seq, _ in todo], [chunk for _, chunk in todo])  # [k, V]
        else:
            logits = [self.engine.prefill(seq, chunk) for seq, chunk in todo]
        for (seq, chunk), row in zip(todo, logits, strict=True):
            seq.prefilled += len(chunk)
            if seq.prefilled == len(seq.prompt):
                self._sample([seq], row[None])

    def _sample(self, seqs: list[Sequence], logits: torch.Tensor) -> None:
        """Pick each row's next token from logits [n, V], emit text, finish rows that are done."""
        now = time.perf_counter()
        masks = {i: m for i, s in enumerate(seqs)
                 if s.request.params.choices and (m := self._listed_mask(s, logits.shape[-1])) is not None}
        if masks:  # only while a listed value is being written: most steps copy nothing
            logits = logits.clone()  # the engine's may be an inference tensor (read-only here)
            for i, keep in masks.items():
                row = torch.full_like(logits[i], float("-inf"))
                row[keep] = logits[i][keep]
                logits[i] = row
        plain = [i for i, s in enumerate(seqs) if s.rng is None and s.seen is None]  # greedy, no penalty
        picks: dict[int, int] = {}
        if plain:
            for i, t in zip(plain, logits[plain].argmax(-1).tolist(), strict=True):
                picks[i] = t
        for i, s in enumerate(seqs):
            if i in picks:
                continue
            try:
                picks[i] = next_token(logits[i], s.request.params, s.seen if s.seen is not None else _EMPTY, s.rng)
            except Exception as e:  # this row only
                self._finish(s, "error", e)
        for i, s in enumerate(seqs):
            if i in picks:
                self._accept(s, picks[i], now)

    def _listed_mask(self, s: Sequence, vocab: int) -> torch.Tensor | None:
        """Ids (< `vocab`, the logits' width) of the tokens that keep `s`'s `choices` field on its
        list, or None when it is free."""
        ids = allowed_tokens(s.detok.text, s.request.params.choices, token_texts(self.engine.tokenizer))
        if ids is None:
            return None
        keep = torch.tensor([i for i in ids if i < vocab], dtype=torch.long)
        # The tokenizer may know tokens the model has no logits for: never leave a row without any.
        return keep if keep.numel() else None

    def _accept(self, s: Sequence, tok: int, now: float) -> None:
        st, p = s.request.stats, s.request.params
        if s.n_out == 0:
            st.ttft_s = now - s.t0
        if tok in self.engine.eos_ids:
            self._emit(s, s.scanner.feed(s.detok.text + s.detok.flush(), final=True))
            self._finish(s, "stop")
            return
        s.n_out += 1
        st.completion_tokens = s.n_out
        last = s.n_out >= p.max_new_tokens
        s.detok.add(tok, final=last)
        self._emit(s, s.scanner.feed(s.detok.text, final=last))
        if s.scanner.stopped:
            self._finish(s, "stop")
        elif last:
            self._finish(s, "length")
        else:
            s.pending = tok
            if s.seen is not None:
                s.seen = torch.cat([s.seen, torch.tensor([tok])])

    def _emit(self, s: Sequence, piece: str) -> None:
        if piece:
            s.on_piece(piece)

    def _finish(self, s: Sequence, reason: str, err: BaseException | None = None) -> None:
        if s.finished:
            return
        s.finished = True
        st = s.request.stats
        st.finish_reason = reason if reason != "error" else st.finish_reason
        st.total_s = time.perf_counter() - s.t0
        if s in self.running:
            self.running.remove(s)
            try:
                self.engine.finish(s)
            except Exception as e:  # keep finishing the others
                log.warning("freeing a row failed: %s", e.__class__.__name__)
        elif s in self.waiting:
            self.waiting.remove(s)
        s.on_done(err)


_EMPTY = torch.empty(0, dtype=torch.long)
