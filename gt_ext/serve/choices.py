"""Constrained JSON string values: a field named in `SamplingParams.choices` can only take one of
its listed strings, whatever else the model writes.

    params = SamplingParams(choices={"action": ["revive", "wait", "escalate"]})

While a request decodes, the text generated so far is read from its end: once it stands at the
value of a listed field (`"action": "` or `"action": "re`, also just before the opening quote),
only tokens that keep that value a prefix of one listed string followed by its closing quote are
allowed; everything else (keys, other fields, the reason) is left to the model. Among the listed
strings the model's own preference decides, token by token, as greedy or sampled decoding would.

A patrol step lists the actions it allows in its prompt; a model that learned the step but writes
an action under a name from its training (`restart` where the list says `revive`) then answers
with the listed name its first tokens lead to. The eval reports constrained and free decoding
side by side (`gt-ext eval run --constrain`), since the free figure is the one that says whether
the model reads the list.
"""

from __future__ import annotations

import re
import weakref
from collections import defaultdict
from typing import Any

# The end of the text stands at a JSON key's value: `"key": ` (before the opening quote) or
# `"key": "partial` (inside it). Values never hold a quote or a backslash here (names are plain).
_AT_VALUE = re.compile(r'"(?P<key>[^"\\]{1,64})"\s*:(?P<gap>\s*)(?P<open>"?)(?P<val>[^"\\]*)$')
_TAIL = 512  # characters of the text to look at: a key and a listed name fit in far less


class TokenTexts:
    """The decoded text of every token id of a tokenizer, indexed by first character."""

    def __init__(self, tokenizer: Any):
        n = len(tokenizer)
        texts = tokenizer.batch_decode([[i] for i in range(n)], skip_special_tokens=False,
                                       clean_up_tokenization_spaces=False)
        self.by_first: dict[str, list[tuple[int, str]]] = defaultdict(list)
        for i, t in enumerate(texts):
            if t and "\ufffd" not in t:  # a byte of a longer character never spells a plain name
                self.by_first[t[0]].append((i, t))

    def extending(self, rest: str) -> list[int]:
        """Token ids whose text spells the start of `rest`, or all of it and more."""
        return [i for i, t in self.by_first.get(rest[0], ()) if rest.startswith(t) or t.startswith(rest)]


# Per tokenizer object, gone with it (an id() key could be reused by a later tokenizer).
_CACHE: weakref.WeakKeyDictionary[Any, TokenTexts] = weakref.WeakKeyDictionary()


def token_texts(tokenizer: Any) -> TokenTexts:
    """`TokenTexts` for `tokenizer`, built once per tokenizer object (about a second for 50K tokens)."""
    texts = _CACHE.get(tokenizer)
    if texts is None:
        texts = _CACHE[tokenizer] = TokenTexts(tokenizer)
    return texts


def allowed_tokens(text: str, choices: dict[str, list[str]], texts: TokenTexts) -> list[int] | None:
    """Token ids the next token may be, given the generated `text`; None when no listed field's
    value is being written (the model is free). An empty list never comes back: a value already
    off the list (a token that spanned the quote) is left as written rather than cut."""
    m = _AT_VALUE.search(text[-_TAIL:])
    if m is None or m["key"] not in choices:
        return None
    ends = [c + '"' for c in choices[m["key"]]]
    if m["open"]:
        rests = [e[len(m["val"]):] for e in ends if e.startswith(m["val"])]
    elif m["val"]:
        return None  # not a string value (a number, `null`, ...): not ours to correct
    else:
        # Before the opening quote: the quote and the value, with one space after the colon at most.
        rests = ['"' + e for e in ends] + ([' "' + e for e in ends] if not m["gap"] else [])
    ids = sorted({i for r in rests if r for i in texts.extending(r)})
    return ids or None
