"""Edit a JSON document while keeping every untouched part byte-for-byte.

`parse(text)` returns the value plus a tree of source spans; `render(new, tree)` writes `new` back,
reusing the original bytes of every object member whose value did not change and re-serialising
only what did (2-space indent, like Go's MarshalIndent). Arrays and scalars are replaced whole.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


@dataclass
class Member:
    """One `"key": value` of an object: `prefix` runs from after `{`/`,` to the value start."""

    prefix: str
    raw: str  # the value's original text
    value: Any
    node: Node | None  # spans inside the value when it is an object
    suffix: str  # whitespace between the value and the next `,` or `}`


@dataclass
class Node:
    """Spans of one JSON object."""

    members: dict[str, Member] = field(default_factory=dict)
    empty_inner: str = ""  # whitespace inside `{}` when the object has no members


@dataclass
class Doc:
    """A parsed document: leading/trailing whitespace around the root value."""

    value: Any
    raw: str
    node: Node | None
    lead: str
    trail: str


def _skip_ws(text: str, i: int) -> int:
    return _WS.match(text, i).end()  # type: ignore[union-attr]


def _parse_value(text: str, i: int) -> tuple[Any, int, Node | None]:
    if text.startswith("{", i):
        return _parse_object(text, i)
    value, end = _DECODER.raw_decode(text, i)
    return value, end, None


def _parse_object(text: str, i: int) -> tuple[dict[str, Any], int, Node]:
    node = Node()
    out: dict[str, Any] = {}
    j = i + 1
    k = _skip_ws(text, j)
    if text.startswith("}", k):
        node.empty_inner = text[j:k]
        return out, k + 1, node
    while True:
        start = j
        k = _skip_ws(text, j)
        if not text.startswith('"', k):
            raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, k)
        key, k = json.decoder.scanstring(text, k + 1)
        k = _skip_ws(text, k)
        if not text.startswith(":", k):
            raise json.JSONDecodeError("Expecting ':' delimiter", text, k)
        k = _skip_ws(text, k + 1)
        vstart = k
        value, vend, child = _parse_value(text, k)
        k = _skip_ws(text, vend)
        member = Member(text[start:vstart], text[vstart:vend], value, child, text[vend:k])
        node.members.pop(key, None)  # a duplicate key: the last one wins, as in json.loads
        node.members[key] = member
        out[key] = value
        if text.startswith(",", k):
            j = k + 1
            continue
        if text.startswith("}", k):
            return out, k + 1, node
        raise json.JSONDecodeError("Expecting ',' delimiter", text, k)


def parse(text: str) -> Doc:
    """Parse `text` (raises json.JSONDecodeError with line/column on bad input)."""
    i = _skip_ws(text, 0)
    value, end, node = _parse_value(text, i)
    rest = _skip_ws(text, end)
    if rest != len(text):
        raise json.JSONDecodeError("Extra data", text, rest)
    return Doc(value, text[i:end], node, text[:i], text[end:])


def same(a: Any, b: Any) -> bool:
    """Deep equality that also tells apart 1, 1.0 and True."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _indent_of(prefix: str) -> str:
    # The whitespace after the last newline before the key: that member's indentation.
    line = prefix.rsplit("\n", 1)[-1]
    return line[: len(line) - len(line.lstrip(" \t"))]


def _dump(value: Any, indent: str) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False).replace("\n", "\n" + indent)


def _render_object(new: dict[str, Any], node: Node, indent: str) -> str:
    if not node.members and not new:
        return "{" + node.empty_inner + "}"
    olds = list(node.members.values())
    member_indent = _indent_of(olds[0].prefix) if olds else indent + "  "
    closing = olds[-1].suffix if olds else "\n" + indent
    parts: list[tuple[str, str, str]] = []
    for key, value in new.items():
        m = node.members.get(key)
        if m is None:
            parts.append((f"\n{member_indent}{json.dumps(key, ensure_ascii=False)}: ",
                          _dump(value, member_indent), ""))
            continue
        # The original last member's suffix is the closing whitespace, used once at the end.
        suffix = "" if m is olds[-1] else m.suffix
        parts.append((m.prefix, _render(value, m.value, m.raw, m.node, _indent_of(m.prefix)), suffix))
    body = [p + v + (s if i < len(parts) - 1 else "") for i, (p, v, s) in enumerate(parts)]
    return "{" + ",".join(body) + closing + "}"


def _render(new: Any, old: Any, raw: str, node: Node | None, indent: str) -> str:
    if same(new, old):
        return raw
    if isinstance(new, dict) and node is not None:
        return _render_object(new, node, indent)
    return _dump(new, indent)


def render(new: Any, doc: Doc | None) -> str:
    """Serialise `new`, keeping the bytes of `doc` wherever `new` did not change them."""
    if doc is None:
        return json.dumps(new, indent=2, ensure_ascii=False) + "\n"
    return doc.lead + _render(new, doc.value, doc.raw, doc.node, "") + doc.trail
