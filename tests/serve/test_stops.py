"""StopScanner: streamed pieces never contain a stop string and add up to the cut text."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gt_ext.serve.stops import StopScanner


def run(chunks: list[str], stops: list[str]) -> tuple[str, bool]:
    sc, text, out = StopScanner(stops), "", ""
    for c in chunks:
        text += c
        out += sc.feed(text)
        if sc.stopped:
            break
    out += sc.feed(text, final=True)
    return out, sc.stopped


def test_cut_at_first_stop():
    assert run(["Hel", "lo\nUs", "er: x"], ["\nUser:"]) == ("Hello", True)


def test_prefix_of_stop_held_back_then_released():
    sc = StopScanner(["</tool_call>"])
    assert sc.feed("abc</to") == "abc"
    assert sc.feed("abc</tox") == "</tox"


def test_partial_utf8_held_back():
    sc = StopScanner([])
    assert sc.feed("ab\ufffd") == "ab"
    assert sc.feed("abé") == "é"


@given(st.lists(st.text(alphabet="abXY", max_size=4), max_size=12), st.lists(st.text(alphabet="abXY", min_size=1, max_size=3), max_size=2))
def test_streaming_equals_cutting_the_whole(chunks, stops):
    whole = "".join(chunks)
    cuts = [whole.find(s) for s in stops if s in whole]
    expected = whole[: min(cuts)] if cuts else whole
    out, stopped = run(chunks, stops)
    assert out == expected
    assert stopped == bool(cuts)


@given(st.lists(st.text(alphabet="abX", max_size=5), max_size=20),
       st.lists(st.text(alphabet="abX", min_size=1, max_size=5), max_size=6))
def test_many_overlapping_stops_cut_where_the_earliest_starts(chunks, stops):
    whole = "".join(chunks)
    cuts = [whole.find(s) for s in stops if s in whole]
    out, stopped = run(chunks, stops)
    assert out == (whole[: min(cuts)] if cuts else whole)
    assert stopped == bool(cuts)


def test_matching_is_linear_in_the_text(monkeypatch):
    """16 stops of 256 characters over 800 tokens: each character is stepped once (was quadratic)."""
    from gt_ext.serve import stops as mod

    steps = 0
    real_step = mod._Automaton.step

    def counting(self, s, ch):
        nonlocal steps
        steps += 1
        return real_step(self, s, ch)

    monkeypatch.setattr(mod._Automaton, "step", counting)
    stops = [("ab" * 128)[i:] + "Z" for i in range(16)]  # long, overlapping, never completed
    sc, text = StopScanner(stops), ""
    for i in range(800):
        text += "ab" if i % 2 else "a b"
        sc.feed(text)
    assert not sc.stopped
    assert steps == len(text)
