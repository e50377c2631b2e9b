"""Incremental detokenization: the text of a growing token list without decoding all of it each step.

Decoding every generated token list whole costs O(n) per step (O(n^2) per answer). Here only a
short window is decoded: the text of the tokens since `prefix` minus the text of those up to `read`
(the window keeps the context a tokenizer needs for leading spaces, as vLLM and TGI do). A piece
that ends in an incomplete UTF-8 character (U+FFFD) waits for the next token.
"""

from __future__ import annotations

from typing import Any


class Detokenizer:
    """Feed token ids one at a time; `text` is the decoded text so far."""

    def __init__(self, tokenizer: Any):
        self.tok = tokenizer
        self.ids: list[int] = []
        self.text = ""
        self._prefix = 0  # start of the decode window
        self._read = 0  # tokens up to here are in `text`

    def add(self, token: int, final: bool = False) -> str:
        """Append one token; return the new text (possibly empty while a character is incomplete)."""
        self.ids.append(token)
        return self._advance(final)

    def flush(self) -> str:
        """The text still held back (an incomplete character at the very end), as decoded."""
        return self._advance(True) if self._read < len(self.ids) else ""

    def _advance(self, final: bool) -> str:
        before = self._decode(self.ids[self._prefix : self._read])
        now = self._decode(self.ids[self._prefix :])
        if not final and (len(now) <= len(before) or now.endswith("\ufffd")):
            return ""  # nothing complete yet
        new = now[len(before) :]
        self._prefix, self._read = self._read, len(self.ids)
        self.text += new
        return new

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True) if ids else ""
