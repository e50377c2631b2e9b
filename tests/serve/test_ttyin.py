"""PromptReader over a real pipe: single lines, gt nudges (text+ESC, Enter), pastes, EOF."""

from __future__ import annotations

import os
import threading
import time

from gt_ext.serve.ttyin import PromptReader, clean


def feed(chunks: list[tuple[float, bytes]]) -> int:
    """A pipe whose writer sends each chunk after its delay, then closes."""
    r, w = os.pipe()

    def writer():
        for delay, data in chunks:
            time.sleep(delay)
            os.write(w, data)
        os.close(w)

    threading.Thread(target=writer, daemon=True).start()
    return r


def read_all(fd: int, **kw) -> list:
    rd, out = PromptReader(fd, **kw), []
    while True:
        p = rd.read()
        out.append(p)
        if p is None:
            return out


def test_single_lines_and_eof():
    assert read_all(feed([(0, b"first\n"), (0.3, b"second\n")])) == ["first", "second", None]


def test_gt_nudge_text_escape_then_enter():
    # gt: send-keys -l TEXT (newlines included), Escape, 0.6 s, Enter; then maybe a spare Enter.
    fd = feed([(0, b"line one\nline two\x1b"), (0.6, b"\n"), (0.5, b"\n")])
    assert read_all(fd, paste_gap=1.0) == ["line one\nline two", "", None]


def test_pasted_block_is_one_prompt():
    fd = feed([(0, b"a\nb\n"), (0.05, b"c\n")])
    assert read_all(fd, paste_gap=0.3) == ["a\nb\nc", None]


def test_backslash_continues():
    assert read_all(feed([(0, b"one \\\n"), (0.2, b"two\n")])) == ["one\ntwo", None]


def test_last_line_without_newline_at_eof():
    assert read_all(feed([(0, b"tail")])) == ["tail", None]


def test_clean_strips_escapes():
    assert clean("\x1b[200~hi\x1b[201~\x1b\x07") == "hi"
