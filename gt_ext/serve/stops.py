"""Stop strings over a token stream: cut at the first stop, and never emit text that may become one."""

from __future__ import annotations


class StopScanner:
    """Feed the full generated text so far; get back the part that is safe to emit.

    A suffix that is a prefix of some stop string is held back until the next token shows whether
    the stop completes (so a streamed answer never shows half of a stop string).
    """

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.emitted = 0  # characters of the text already handed out
        self.stopped = False

    def feed(self, text: str, final: bool = False) -> str:
        """Return the new safe text given the whole generated `text`; sets `stopped` on a stop string."""
        if self.stopped:
            return ""
        cut = len(text)
        for s in self.stops:
            i = text.find(s, max(0, self.emitted - len(s) + 1))
            if i != -1 and i < cut:
                cut = i
                self.stopped = True
        if not self.stopped and not final:
            # Hold back an undecoded partial UTF-8 character and a possible stop-string prefix.
            if text.endswith("\ufffd"):
                cut = len(text) - 1
            for s in self.stops:
                for k in range(min(len(s) - 1, len(text)), 0, -1):
                    if text.endswith(s[:k]):
                        cut = min(cut, len(text) - k)
                        break
        if cut <= self.emitted:
            return ""
        out = text[self.emitted : cut]
        self.emitted = cut
        return out
