"""Chunking by structure: one bead, one markdown section, one formula step, one settings key.

Every chunk id is sha256(source, text)[:32]: the same content from the same source always gets the
same id, so re-indexing never duplicates, and an edited chunk gets a new id (the old one is deleted).
Metadata values are plain str/int/float, as Chroma requires; "*" means "any rig" / "any role".
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gt_ext.rag.redact import clean

ANY = "*"
# Long sections are split on paragraph boundaries into pieces of at most this many characters
# (MiniLM reads 256 word pieces; ~1,200 characters is about that, and keeps a chunk well under the
# context budget of the serving model).
MAX_CHARS = 1200


@dataclass(frozen=True)
class Chunk:
    """One indexed unit: `text` is what is embedded and what goes into the context block."""

    id: str
    text: str
    meta: dict[str, Any] = field(default_factory=dict)


def chunk_id(source: str, text: str) -> str:
    """Deterministic id from the source key and the content."""
    return hashlib.sha256(f"{source}\0{text}".encode()).hexdigest()[:32]


def make_chunk(text: str, *, source: str, group: str, kind: str, rig: str = ANY, role: str = ANY,
               status: str = "", updated: float = 0.0, title: str = "") -> Chunk:
    """Build a chunk with the standard metadata (see module docstring); text and title are scrubbed."""
    text, title = clean(text), clean(title)
    meta = {"source": source, "group": group, "kind": kind, "rig": rig or ANY, "role": role or ANY,
            "status": status, "updated": float(updated), "title": title[:200]}
    return Chunk(chunk_id(source, text), text, meta)


def parse_time(value: Any) -> float:
    """ISO-8601 (bd's `2026-01-02T03:04:05Z`) -> epoch seconds; 0.0 when absent or unparsable."""
    if not value or not isinstance(value, str):
        return 0.0
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def split_long(text: str, limit: int = MAX_CHARS) -> list[str]:
    """Split text on blank lines (then lines, then hard) into pieces of at most `limit` characters."""
    if len(text) <= limit:
        return [text]
    pieces: list[str] = []
    cur = ""
    for para in re.split(r"\n\s*\n", text):
        units = [para] if len(para) <= limit else _hard_split(para, limit)
        for u in units:
            if cur and len(cur) + 2 + len(u) > limit:
                pieces.append(cur)
                cur = u
            else:
                cur = f"{cur}\n\n{u}" if cur else u
    if cur:
        pieces.append(cur)
    return pieces


def _hard_split(para: str, limit: int) -> list[str]:
    out, cur = [], ""
    for line in para.splitlines():
        while len(line) > limit:
            out.append(line[:limit])
            line = line[limit:]
        if cur and len(cur) + 1 + len(line) > limit:
            out.append(cur)
            cur = line
        else:
            cur = f"{cur}\n{line}" if cur else line
    if cur:
        out.append(cur)
    return out


# ---------------------------------------------------------------------------------------------- beads

def bead_text(bead: dict[str, Any], rig: str) -> str:
    """Render a bead (bd's JSON) as one compact block: header line, fields, then the description."""
    bid = bead.get("id", "?")
    head = (f"bead {bid} [{bead.get('status', '?')}] P{bead.get('priority', '?')} "
            f"{bead.get('issue_type', 'task')}: {bead.get('title', '').strip()}")
    lines = [head, f"rig: {rig}"]
    if bead.get("assignee"):
        lines.append(f"assignee: {bead['assignee']}")
    labels = bead.get("labels") or []
    if labels:
        lines.append("labels: " + ", ".join(str(x) for x in labels))
    deps = []
    for d in bead.get("dependencies") or []:
        if isinstance(d, dict):
            target = d.get("depends_on_id") or d.get("id") or "?"
            deps.append(f"{target} ({d.get('type') or d.get('dependency_type') or 'blocks'})")
        else:
            deps.append(str(d))
    if deps:
        lines.append("depends on: " + ", ".join(deps))
    if bead.get("close_reason"):
        lines.append(f"closed: {bead['close_reason']}")
    for key in ("description", "design", "acceptance_criteria", "notes"):
        val = (bead.get(key) or "").strip()
        if val:
            lines.append(val if key == "description" else f"{key.replace('_', ' ')}: {val}")
    return "\n".join(lines)


def bead_source(rig: str, bead_id: str) -> str:
    """The source key of a bead's chunks: `bead:<rig>:<id>` (rig "*" for town beads)."""
    return f"bead:{rig}:{bead_id}"


def chunk_bead(bead: dict[str, Any], *, rig: str, group: str) -> list[Chunk]:
    """One chunk per bead (split only if its text is very long); status and time go in metadata."""
    bid = str(bead.get("id", ""))
    source = bead_source(rig, bid)
    text = bead_text(bead, rig)
    updated = parse_time(bead.get("updated_at")) or parse_time(bead.get("created_at"))
    role = _role_from_labels(bead.get("labels") or [])
    pieces = split_long(text, MAX_CHARS * 2)
    return [make_chunk(p if i == 0 else f"(bead {bid}, continued)\n{p}", source=source, group=group,
                       kind="bead", rig=rig, role=role, status=str(bead.get("status", "")),
                       updated=updated, title=str(bead.get("title", "")))
            for i, p in enumerate(pieces)]


def _role_from_labels(labels: list[Any]) -> str:
    from gt_ext.roles import ROLES

    for lab in labels:
        s = str(lab)
        s = s.split(":", 1)[1] if s.startswith("role:") else s
        if s in ROLES:
            return s
    return ANY


# ------------------------------------------------------------------------------------------- markdown

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def markdown_sections(text: str) -> list[tuple[str, str]]:
    """Split markdown into (heading path, body) by headings; code fences are never split on."""
    sections: list[tuple[str, str]] = []
    stack: list[tuple[int, str]] = []
    body: list[str] = []
    in_fence = False

    def flush() -> None:
        content = "\n".join(body).strip()
        if content:
            sections.append((" > ".join(h for _, h in stack), content))
        body.clear()

    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            in_fence = not in_fence
        m = None if in_fence else _HEADING.match(line)
        if m:
            flush()
            level = len(m.group(1))
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, m.group(2)))
        else:
            body.append(line)
    flush()
    return sections


def chunk_markdown(text: str, *, source: str, group: str, kind: str = "doc", rig: str = ANY,
                   role: str = ANY, updated: float = 0.0) -> list[Chunk]:
    """One chunk per markdown section, prefixed with the file and heading path for context."""
    out: list[Chunk] = []
    seen: set[str] = set()
    name = source.split(":", 1)[-1]
    for heading, body in markdown_sections(text):
        for piece in split_long(body):
            chunk_text = f"{name} — {heading}\n{piece}" if heading else f"{name}\n{piece}"
            c = make_chunk(chunk_text, source=source, group=group, kind=kind, rig=rig, role=role,
                           updated=updated, title=heading or name)
            if c.id not in seen:  # the same text twice in one file is one chunk
                seen.add(c.id)
                out.append(c)
    return out


# ------------------------------------------------------------------------------------------- formulas

def chunk_formula(text: str, *, source: str, group: str, rig: str = ANY, updated: float = 0.0) -> list[Chunk]:
    """A formula (TOML): one chunk for its header and variables, one per `[[steps]]` entry.

    Raises ValueError on TOML that does not parse (the caller names the file).
    """
    data = tomllib.loads(text)
    name = str(data.get("formula") or source.rsplit("/", 1)[-1].removesuffix(".formula.toml"))
    head = [f"formula {name} ({data.get('type', 'workflow')}): {str(data.get('description', '')).strip()}"]
    for var, spec in (data.get("vars") or {}).items():
        if isinstance(spec, dict):
            req = " (required)" if spec.get("required") else ""
            dflt = f" default={spec['default']!r}" if "default" in spec else ""
            head.append(f"var {var}{req}{dflt}: {spec.get('description', '')}")
        else:
            head.append(f"var {var} default={spec!r}")
    steps = data.get("steps") or []
    if steps:
        head.append("steps: " + ", ".join(str(s.get("id", "?")) for s in steps if isinstance(s, dict)))
    chunks = [make_chunk("\n".join(head), source=source, group=group, kind="formula", rig=rig,
                         updated=updated, title=f"formula {name}")]
    for s in steps:
        if not isinstance(s, dict):
            continue
        lines = [f"formula {name} step {s.get('id', '?')}: {s.get('title', '')}"]
        if s.get("needs"):
            lines.append("needs: " + ", ".join(str(n) for n in s["needs"]))
        if s.get("description"):
            lines.append(str(s["description"]).strip())
        if s.get("acceptance"):
            lines.append(f"acceptance: {str(s['acceptance']).strip()}")
        for piece in split_long("\n".join(lines)):
            chunks.append(make_chunk(piece, source=source, group=group, kind="formula", rig=rig,
                                     updated=updated, title=f"formula {name} step {s.get('id', '?')}"))
    return _dedup(chunks)


# ------------------------------------------------------------------------------------------- settings

def chunk_settings(obj: dict[str, Any], *, source: str, group: str, rig: str = ANY, updated: float = 0.0) -> list[Chunk]:
    """Town/rig settings JSON: scalars in one chunk, each structured key its own, one per agent."""
    name = source.split(":", 1)[-1]
    chunks = []
    scalars = [f"{k} = {json.dumps(v)}" for k, v in obj.items() if not isinstance(v, dict | list)]
    if scalars:
        chunks.append(make_chunk(f"{name}: " + ", ".join(scalars), source=source, group=group,
                                 kind="settings", rig=rig, updated=updated, title=name))
    for key, val in obj.items():
        if not isinstance(val, dict | list):
            continue
        if key == "agents" and isinstance(val, dict):
            for agent, cfg in val.items():
                txt = f"{name}: agent {agent} = {json.dumps(cfg, sort_keys=True)}"
                chunks.extend(make_chunk(p, source=source, group=group, kind="settings", rig=rig,
                                         updated=updated, title=f"agent {agent}") for p in split_long(txt))
        else:
            txt = f"{name}: {key} = {json.dumps(val, sort_keys=True)}"
            chunks.extend(make_chunk(p, source=source, group=group, kind="settings", rig=rig,
                                     updated=updated, title=key) for p in split_long(txt))
    return _dedup(chunks)


# ------------------------------------------------------------------------------------------- sessions

def chunk_session(record: dict[str, Any], *, source: str, group: str, max_chars: int = MAX_CHARS) -> list[Chunk]:
    """A corpus SFT record (already scrubbed): its user/assistant turns as one chunk, trimmed."""
    prov = record.get("provenance") or {}
    turns = []
    for m in record.get("messages") or []:
        if m.get("role") in ("user", "assistant"):
            turns.append(f"{m['role']}: {str(m.get('content', '')).strip()}")
    if not turns:
        return []
    head = f"session {prov.get('session', '?')} ({record.get('role', '?')}, {record.get('task', '?')})"
    text = (head + "\n" + "\n".join(turns))[:max_chars]
    return [make_chunk(text, source=source, group=group, kind="session", rig=str(prov.get("rig") or ANY),
                       role=str(record.get("role") or ANY), updated=parse_time(prov.get("time")), title=head)]


def _dedup(chunks: list[Chunk]) -> list[Chunk]:
    seen: set[str] = set()
    out = []
    for c in chunks:
        if c.id not in seen:
            seen.add(c.id)
            out.append(c)
    return out
