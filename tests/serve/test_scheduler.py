"""Continuous batching (DecodeLoop) on the tiny LLaMA: requests join and leave a running batch
between steps and get exactly what they get alone; prompts prefill in chunks; detokenizing is
incremental and equal to decoding the whole answer."""

from __future__ import annotations

import pytest

from gt_ext.serve.detok import Detokenizer
from gt_ext.serve.params import SamplingParams
from gt_ext.serve.scheduler import DecodeLoop

MSGS = [
    [{"role": "user", "content": "Say something about beads and rigs."}],
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "You are a witness."}, {"role": "user", "content": "Report the patrol."}],
]


class Collect:
    def __init__(self):
        self.text, self.done, self.err = "", False, None

    def piece(self, p: str) -> None:
        self.text += p

    def finish(self, err) -> None:
        self.done, self.err = True, err


def test_request_joining_a_running_batch_gets_what_it_gets_alone(gen, adapters):
    p = SamplingParams(max_new_tokens=12)
    stacks = [[], [(adapters["a"], 1.0)], [(adapters["b"], 0.7)]]
    alone = [gen.chat(m, p, adapters=s) for m, s in zip(MSGS, stacks, strict=True)]
    reqs = [gen.request(m, p, s) for m, s in zip(MSGS, stacks, strict=True)]
    outs = [Collect() for _ in reqs]
    with gen.lock:
        loop = gen.loop
        loop.add(reqs[0], outs[0].piece, outs[0].finish)
        for _ in range(4):  # request 0 is decoding when the others join
            loop.step()
        assert outs[0].text and not outs[0].done
        loop.add(reqs[1], outs[1].piece, outs[1].finish)
        loop.step()
        loop.add(reqs[2], outs[2].piece, outs[2].finish)
        while not loop.idle:
            loop.step()
        assert gen._engine.decoder.cache.used == 0  # every row was given back
    assert [o.text for o in outs] == alone
    assert all(o.done and o.err is None for o in outs)
    assert all(r.stats.finish_reason in ("length", "stop") and r.stats.completion_tokens for r in reqs)


def test_cancelled_row_leaves_and_the_others_finish(gen):
    p = SamplingParams(max_new_tokens=10)
    alone = gen.chat(MSGS[1], p)
    gone, stay = gen.request(MSGS[0], p), gen.request(MSGS[1], p)
    out_gone, out_stay = Collect(), Collect()
    with gen.lock:
        gen.loop.add(gone, out_gone.piece, out_gone.finish)
        gen.loop.add(stay, out_stay.piece, out_stay.finish)
        gen.loop.step()
        gone.cancel.set()  # its client went away
        gen.loop.step()
        assert out_gone.done and gone.stats.finish_reason == "cancelled"
        assert len(gen.loop.running) == 1
        while not gen.loop.idle:
            gen.loop.step()
    assert out_stay.text == alone and out_stay.err is None


def test_chunked_prefill_equals_whole_prompt(gen):
    """A prompt prefilled 5 tokens at a time (several steps, next to a decoding row) gives the
    same greedy answer as one prefill."""
    p = SamplingParams(max_new_tokens=10)
    whole = gen.chat(MSGS[2], p)
    loop = DecodeLoop(gen._engine, gen.render, max_batch=4, prefill_chunk=5, prefill_budget=5)
    other, chunked = gen.request(MSGS[1], p), gen.request(MSGS[2], p)
    out_other, out = Collect(), Collect()
    with gen.lock:
        loop.add(other, out_other.piece, out_other.finish)
        loop.add(chunked, out.piece, out.finish)
        steps = 0
        while not loop.idle:
            loop.step()
            steps += 1
    assert chunked.stats.prompt_tokens > 10  # it did take several chunks
    assert out.text == whole and out_other.text == gen.chat(MSGS[1], p)
    assert steps >= chunked.stats.prompt_tokens // 5


def test_too_long_prompt_is_refused_before_it_joins(gen):
    from gt_ext.errors import GtExtError

    with gen.lock, pytest.raises(GtExtError, match="exceeds the model's context"):
        gen.loop.add(gen.request(MSGS[0], SamplingParams(max_new_tokens=10_000)), print, print)
    assert gen.loop.idle


def test_incremental_detokenizer_equals_whole_decode(gen):
    tok = gen.tokenizer
    text = "Ünïcödé → 漢字 and emoji 🚂🚃 with  spaces\n\tand code: def f(x): return x**2"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    d = Detokenizer(tok)
    pieces = [d.add(t, final=i == len(ids) - 1) for i, t in enumerate(ids)]
    assert "".join(pieces) == d.text == tok.decode(ids, skip_special_tokens=True)
    assert all("\ufffd" not in piece for piece in pieces)  # a half character is held back, never shown
