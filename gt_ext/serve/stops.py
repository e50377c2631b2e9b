"""Stop strings over a token stream: cut at the first stop, and never emit text that may become one.

Matching is linear in the generated text whatever the stops are: an Aho-Corasick automaton over
the stop strings is fed each new character once. Its state is the longest suffix of the text
that is a prefix of some stop, which is exactly the text to hold back (it may still become a stop).
"""

from __future__ import annotations


class _Automaton:
    """Aho-Corasick over `patterns`: goto edges, failure links, and per state its depth and the
    length of the longest pattern ending there (0 if none)."""

    def __init__(self, patterns: list[str]):
        self.goto: list[dict[str, int]] = [{}]
        self.depth = [0]
        self.match = [0]
        for pat in patterns:
            s = 0
            for ch in pat:
                nxt = self.goto[s].get(ch)
                if nxt is None:
                    nxt = len(self.goto)
                    self.goto[s][ch] = nxt
                    self.goto.append({})
                    self.depth.append(self.depth[s] + 1)
                    self.match.append(0)
                s = nxt
            self.match[s] = max(self.match[s], len(pat))
        self.fail = [0] * len(self.goto)
        order = list(self.goto[0].values())  # breadth first: a state's failure target is shallower
        for s in order:
            for ch, t in self.goto[s].items():
                f = self.fail[s]
                while f and ch not in self.goto[f]:
                    f = self.fail[f]
                self.fail[t] = self.goto[f].get(ch, 0)
                self.match[t] = max(self.match[t], self.match[self.fail[t]])
                order.append(t)

    def step(self, s: int, ch: str) -> int:
        while s and ch not in self.goto[s]:
            s = self.fail[s]
        return self.goto[s].get(ch, 0)


class StopScanner:
    """Feed the full generated text so far; get back the part that is safe to emit.

    A suffix that is a prefix of some stop string is held back until the next token shows whether
    the stop completes (so a streamed answer never shows half of a stop string). The text is cut
    where the earliest stop occurrence starts, as if the whole text were searched at once.
    """

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self._ac = _Automaton(self.stops)
        self._fed = ""  # text the automaton has consumed
        self._state = 0
        self._cut: int | None = None  # start of the earliest stop found so far
        self.emitted = 0  # characters of the text already handed out
        self.stopped = False

    def _feed_chars(self, text: str, end: int) -> None:
        if not text.startswith(self._fed):  # the detokenizer changed earlier text: rescan (rare)
            self._fed, self._state, self._cut = "", 0, None
        pos = len(self._fed)
        ac, s = self._ac, self._state
        for ch in text[pos:end]:
            s = ac.step(s, ch)
            pos += 1
            if ac.match[s]:
                start = pos - ac.match[s]
                if self._cut is None or start < self._cut:
                    self._cut = start
            if self._cut is not None and pos - ac.depth[s] >= self._cut:
                break  # no stop that started before the cut can still complete
        self._state, self._fed = s, text[:pos]

    def feed(self, text: str, final: bool = False) -> str:
        """Return the new safe text given the whole generated `text`; sets `stopped` on a stop string."""
        if self.stopped:
            return ""
        # Hold back an undecoded partial UTF-8 character.
        end = len(text) - 1 if not final and text.endswith("\ufffd") else len(text)
        if self.stops:
            self._feed_chars(text, end)
        pending = len(self._fed) - self._ac.depth[self._state]  # where a possible stop starts
        if self._cut is not None and (final or pending >= self._cut):
            self.stopped = True
            safe = self._cut
        elif final:
            safe = len(text)
        else:
            safe = min(pending, self._cut) if self._cut is not None else pending
            if not self.stops:
                safe = end
        if safe <= self.emitted:
            return ""
        out = text[self.emitted : safe]
        self.emitted = safe
        return out
