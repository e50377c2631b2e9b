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
