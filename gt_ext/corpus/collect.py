"""Collection: turn spooled hook events, transcript folders, live panes, curated files and town
artifacts into stored examples.

`process_spool` is what `gt-ext corpus process` runs: it holds an exclusive lock on the store,
handles spool files oldest first, each in one transaction together with its "done" mark, and
deletes the file only after that commit. Killed at any point, a rerun redoes at most the entry in
flight, and content-hash ids make that a no-op.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gt_ext.corpus import spool
from gt_ext.corpus.eventindex import EventIndex
from gt_ext.corpus.ingest import NODE0_SOURCE, Ingestor, Source, Tags
from gt_ext.corpus.parsers import (
    ParsedSession,
    is_node0_transcript,
    parse_chat_file,
    parse_claude_jsonl,
    parse_pane_text,
    parse_pi_jsonl,
    pi_header,
)
from gt_ext.corpus.scrub import safe_message
from gt_ext.corpus.store import Store
from gt_ext.corpus.tags import (
    attempt_outcome,
    check_role_tag,
    outcome_from_issue,
    rig_from_actor,
    role_from_actor,
    task_from_issue,
)
from gt_ext.digest import sha256_file
from gt_ext.errors import GtExtError
from gt_ext.gastown.town import Town
from gt_ext.paths import claude_projects_dir
from gt_ext.roles import ROLES

log = logging.getLogger(__name__)

_FORMAT_SOURCES = {"claude": "claude-jsonl", "node0": NODE0_SOURCE, "pi": "pi-jsonl"}

# Tests set this to kill processing at the worst moment (entry committed, spool file not yet
# removed) and check that a rerun neither loses nor duplicates anything.
_CRASH_AFTER = int(os.environ.get("GT_EXT_CORPUS_CRASH_AFTER", "0") or 0)


def pi_agent_dir() -> Path:
    """pi's agent folder: $PI_CODING_AGENT_DIR, else ~/.pi/agent (pi keeps sessions in its `sessions/`)."""
    return Path(os.environ.get("PI_CODING_AGENT_DIR") or Path.home() / ".pi" / "agent").expanduser()


def pi_session_files(agent_dir: Path | None = None) -> list[Path]:
    """pi's session files: `<agent dir>/sessions/--<cwd>--/<time>_<id>.jsonl`."""
    d = (agent_dir or pi_agent_dir()) / "sessions"
    return sorted(d.glob("*/*.jsonl")) if d.is_dir() else []


def actor_from_cwd(cwd: str | None, town_root: Path | None) -> str | None:
    """The gt actor a work dir belongs to (`<town>/webapp/polecats/nux` -> `webapp/polecats/nux`,
    `<town>/mayor` -> `mayor`), or None outside the town."""
    if not cwd or town_root is None:
        return None
    try:
        rel = Path(cwd).resolve().relative_to(Path(town_root).resolve())
    except (ValueError, OSError):
        return None
    parts = [p for p in rel.parts if p not in ("rig", ".")]
    return "/".join(parts) or None


@dataclass
class ProcessReport:
    """What one processing run did."""

    events: int = 0
    sessions: int = 0
    stored: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    errors: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    unresolved_beads: list[str] = field(default_factory=list)
    # `corpus add`: what became of each example ({file, id, status, reason}), duplicates included
    outcomes: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def try_lock(store: Store) -> int | None:
    """Take the processing lock without waiting: the fd to close, or None when someone holds it."""
    fd = os.open(store.root / "process.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except BlockingIOError:
        os.close(fd)
        return None


@contextmanager
def process_lock(store: Store, wait_s: float = 120.0) -> Iterator[None]:
    """Exclusive processing lock on the store: a second processor waits its turn (up to `wait_s`,
    then a clear error). The lock dies with its process, so a killed processor never blocks."""
    fd = os.open(store.root / "process.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise GtExtError(f"another corpus processor holds {store.root / 'process.lock'}") from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)


# --- where transcripts may come from -------------------------------------------------------------
# Session ids name files: no path separators, no "..", nothing a glob would expand.
_SESSION_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def valid_session_id(session_id: Any) -> bool:
    """A session id that can only name a file inside a transcript folder (`../x` cannot)."""
    return isinstance(session_id, str) and bool(_SESSION_ID_RE.match(session_id)) and ".." not in session_id


def transcript_roots(projects: Path | None = None) -> list[Path]:
    """The folders transcripts are read from: Claude's projects folder (node0 sessions are written
    there too), pi's `sessions/`, and any folder in $GT_EXT_TRANSCRIPT_ROOTS (os.pathsep-separated)."""
    roots = [projects or claude_projects_dir(), pi_agent_dir() / "sessions"]
    roots += [Path(p).expanduser() for p in os.environ.get("GT_EXT_TRANSCRIPT_ROOTS", "").split(os.pathsep) if p]
    return [r.resolve() for r in roots]


def inside_roots(path: str | os.PathLike, roots: list[Path]) -> Path | None:
    """`path` with symlinks resolved when it is a file inside one of `roots`, else None. Bead
    metadata, session ids and hook payloads are written by agents: a path from them must not pull
    an arbitrary readable file (`/etc/passwd`, `~/.ssh/id_rsa`) into the corpus."""
    try:
        p = Path(path).expanduser().resolve(strict=True)
    except (OSError, RuntimeError, ValueError):
        return None
    return p if p.is_file() and any(p.is_relative_to(r) for r in roots) else None


# --- finding the sessions that worked a bead ----------------------------------------------------
def find_transcript(session_id: str, projects: Path, cwd: str | None = None) -> Path | None:
    """Claude's transcript of `session_id`: ``<projects>/<cwd with / as ->/<id>.jsonl``, else any
    project folder holding that file name; None for an id that is not a plain file name, or a
    file that resolves outside `projects`."""
    if not valid_session_id(session_id):
        log.warning("session id %r is not a plain name: no transcript looked up", safe_message(str(session_id))[:80])
        return None
    roots = [projects.resolve()]
    if cwd:
        p = projects / cwd.replace("/", "-") / f"{session_id}.jsonl"
        if p.is_file():
            return inside_roots(p, roots)
    if projects.is_dir():
        for p in projects.glob(f"*/{session_id}.jsonl"):
            return inside_roots(p, roots)
    return None


def sessions_for_bead(issue: dict[str, Any], index: EventIndex, town_root: Path | None,
                      projects: Path) -> list[dict[str, Any]]:
    """Sessions that worked a bead: from gt's event log (`done`/`sling` name the actor, and the
    actor's `session_start` gives session id and cwd) through the store's `EventIndex` (the
    caller syncs it), the assignee's `.runtime/session_id`, and session ids the bead itself
    records in metadata. Each: {session, actor, cwd, role, attempt, transcript}; `attempt` is that
    session's own outcome when the events tell it (`attempt_outcome`)."""
    bead = str(issue.get("id"))
    actors = {a for a in (issue.get("assignee"),) if a} | index.actors_for_bead(bead)
    found: dict[str, dict[str, Any]] = {}
    for a in sorted(actors):
        lo, hi = index.bead_span(a, bead)
        for s in index.session_starts(a, lo, hi):
            found[s["session"]] = {"session": s["session"], "actor": a, "cwd": s["cwd"], "role": s["role"],
                                   "attempt": attempt_outcome(index.window(a, s["pos"]), bead)}
    if town_root is not None:
        town = Town(Path(town_root))
        for a in sorted(actors):
            if sid := town.session_id_of(a):
                found.setdefault(sid, {"session": sid, "actor": a, "cwd": str(town_root / a), "role": None})
    meta = issue.get("metadata") if isinstance(issue.get("metadata"), dict) else {}
    for key in ("session_id", "claude_session_id"):
        if meta.get(key):
            if not valid_session_id(meta[key]):
                log.warning("bead %s: metadata.%s is not a plain session id: ignored", bead, key)
                continue
            found.setdefault(meta[key], {"session": meta[key], "actor": issue.get("assignee"), "cwd": None, "role": None})
    from_meta = None
    if meta.get("transcript_path"):
        from_meta = inside_roots(str(meta["transcript_path"]), transcript_roots(projects))
        if from_meta is None:
            log.warning("bead %s: metadata.transcript_path is not a file inside the transcript roots: ignored", bead)
    for s in found.values():
        s["transcript"] = find_transcript(s["session"], projects, s.get("cwd")) or from_meta
    return list(found.values())


def _rig_of_beads_dir(beads_dir: str | None, town_root: Path | None) -> str | None:
    if not beads_dir or town_root is None:
        return None
    try:
        rel = Path(beads_dir).resolve().relative_to(town_root.resolve())
    except ValueError:
        return None
    parts = rel.parts
    return None if not parts or parts[0] == ".beads" else parts[0]


# --- ingesting one transcript --------------------------------------------------------------------
def transcript_source(path: Path, tags: Tags, h: str) -> tuple[Source, Any]:
    """(source, parser) for an agent transcript, told apart by its first line: pi's starts with its
    session header, the node0 agent's entries name it as their `entrypoint`, else Claude Code's."""
    group = tags.user or tags.rig
    if (header := pi_header(path)) is not None:
        return Source("pi-jsonl", f"pi:{tags.session or header['id']}", h, group=group), parse_pi_jsonl
    if is_node0_transcript(path):
        return Source(NODE0_SOURCE, f"node0:{tags.session or path.stem}", h, group=group), parse_claude_jsonl
    return Source("claude-jsonl", f"claude:{tags.session or path.stem}", h, group=group), parse_claude_jsonl


def ingest_transcript(ing: Ingestor, path: Path, tags: Tags, report: ProcessReport) -> None:
    """Parse and store one agent transcript (Claude Code's, the node0 agent's or a pi session
    file); a malformed one is quarantined with its error. What the transcript says about itself
    (the node0 agent's role, rig, actor, bead and model; Claude's model) fills tags left blank."""
    src, parse = transcript_source(path, tags, sha256_file(path))
    try:
        parsed = parse(path)
    except GtExtError as e:
        msg = safe_message(str(e))  # paths name users: the error is scrubbed like the data
        report.errors.append(msg)
        log.error("%s", msg)
        ing.record_failure(src, f"parse error: {msg}", tags)
        return
    meta = parsed.meta
    tags.session = tags.session or parsed.session
    tags.time = tags.time or parsed.time
    tags.role = tags.role or role_from_actor(meta.get("role")) or role_from_actor(meta.get("actor"))
    tags.rig = tags.rig or meta.get("rig")
    tags.bead = tags.bead or meta.get("bead")
    tags.user = tags.user or meta.get("actor")
    tags.model = tags.model or meta.get("model")
    r = ing.ingest(parsed.messages, tags, src)
    report.sessions += 1
    report.duplicates += r.duplicates
    for st, ids in r.inserted.items():
        report.stored[st] = report.stored.get(st, 0) + len(ids)


def _handle_bead_close(ing: Ingestor, ev: dict, index: EventIndex, town_root: Path | None, projects: Path,
                       report: ProcessReport) -> None:
    payload = ev.get("payload")
    issue = payload[0] if isinstance(payload, list) and payload else payload
    if not isinstance(issue, dict) or not issue.get("id"):
        argv = ev.get("argv") or []
        issue = {"id": argv[0]} if argv else None
    if not issue:
        raise GtExtError("bead_close event without an issue id")
    rig = _rig_of_beads_dir(ev.get("beads_dir"), town_root) or rig_from_actor(issue.get("assignee"))
    outcome = outcome_from_issue(issue) if issue.get("status") else "success"
    sessions = sessions_for_bead(issue, index, town_root, projects)
    if not sessions:
        report.unresolved_beads.append(issue["id"])
        log.warning("bead %s: no session found (assignee, events, .runtime)", issue["id"])
    for s in sessions:
        role = role_from_actor(s.get("role")) or role_from_actor(s.get("actor")) or role_from_actor(issue.get("assignee"))
        tags = Tags(role=role, task=task_from_issue(issue), rig=rig or rig_from_actor(s.get("actor")),
                    bead=issue["id"], session=s["session"], user=s.get("actor"), outcome=s.get("attempt") or outcome)
        # Remember the link: a transcript that arrives later (Stop hook, batch scan) gets these tags.
        ing.store.set_link(s["session"], bead=tags.bead, role=tags.role, rig=tags.rig, task=tags.task,
                           outcome=tags.outcome, user=tags.user)
        if s.get("transcript"):
            ingest_transcript(ing, Path(s["transcript"]), tags, report)


def _handle_session_stop(ing: Ingestor, ev: dict, projects: Path, report: ProcessReport) -> None:
    payload = ev.get("payload") if isinstance(ev.get("payload"), dict) else {}
    env = ev.get("env") or {}
    sid = payload.get("session_id") or env.get("GT_SESSION_ID")
    tpath = payload.get("transcript_path")
    if sid is not None and not valid_session_id(sid):
        log.warning("session_stop event: session id is not a plain name (no '/', no '..'): not used")
        sid = None  # never a file name; the transcript's own header or file name gives it
    if tpath:
        path = inside_roots(str(tpath), transcript_roots(projects))
        if path is None:
            raise GtExtError(f"session_stop event: transcript {safe_message(str(tpath))} is not a file inside the "
                             "transcript roots (Claude's projects folder, pi's sessions, $GT_EXT_TRANSCRIPT_ROOTS)")
    else:
        path = find_transcript(sid, projects, ev.get("cwd")) if sid else None
    if path is None or not path.is_file():
        raise GtExtError(f"session_stop event: transcript {'of session ' + sid if sid else ''} not found")
    actor = env.get("BD_ACTOR") or env.get("GT_ROLE")
    if not sid:
        # pi names its file <time>_<session id>.jsonl: its header holds the bare id.
        header = pi_header(path)
        sid = header["id"] if header is not None else path.stem
    tags = Tags(role=role_from_actor(env.get("GT_ROLE")) or role_from_actor(actor), rig=env.get("GT_RIG"),
                session=sid, user=actor)
    ingest_transcript(ing, path, tags, report)


def _trusted_bead_close(ev: dict, beads_dirs: dict[str, Path]) -> dict:
    """A bead close from a hook's pending folder, which an agent's commands could also write: only
    its bead id and beads folder are taken (the folder must be one of the town's), and the issue is
    read again from bd; any other kind of event from there is refused."""
    from gt_ext.gastown.bd import Bd

    if ev.get("kind") != "bead_close":
        raise GtExtError(f"pending hook event of kind {ev.get('kind')!r} refused: only bead closes come from there")
    known = {str(Path(d).resolve()): Path(d) for d in beads_dirs.values()}
    folder = known.get(str(Path(str(ev.get("beads_dir") or "")).resolve()))
    argv = ev.get("argv") or []
    bead = argv[0] if argv and isinstance(argv[0], str) else None
    if folder is None or not bead:
        raise GtExtError("pending bead close without a bead id of one of the town's beads folders: refused")
    issue = Bd(folder).show(bead).model_dump(exclude_none=True)
    return {"kind": "bead_close", "payload": issue, "argv": [bead, "close"], "beads_dir": str(folder)}


def trigger(store: Store, town_root: Path | None = None, projects: Path | None = None) -> ProcessReport | None:
    """What a hook starts in the background: process the spool unless another processor is at it.

    No event is left behind: a hook spools before it triggers, and the holder checks the spool
    again after releasing the lock, so an event written while it worked is either seen by it or
    by a trigger that finds the lock free. Returns None when another processor was busy.
    """
    total: ProcessReport | None = None
    while True:
        fd = try_lock(store)
        if fd is None:
            return total
        try:
            rep = _process_locked(store, town_root, projects, False)
        finally:
            os.close(fd)
        if total is None:
            total = rep
        else:
            total.events += rep.events
            total.sessions += rep.sessions
            total.errors += rep.errors
            for k, v in rep.stored.items():
                total.stored[k] = total.stored.get(k, 0) + v
        if not spool.pending(store.spool_dir):
            return total


def process_spool(store: Store, town_root: Path | None = None, projects: Path | None = None,
                  progress: bool = False) -> ProcessReport:
    """Consume the spool: idempotent, safe to kill, one transaction per entry."""
    with process_lock(store):
        return _process_locked(store, town_root, projects, progress)


def _process_locked(store: Store, town_root: Path | None, projects: Path | None, progress: bool) -> ProcessReport:
    """The spool loop; the caller holds the processing lock."""
    projects = projects or claude_projects_dir()
    report = ProcessReport()
    ing = Ingestor(store)
    index = EventIndex(store, town_root)
    beads_dirs = Town(Path(town_root)).beads_dirs() if town_root is not None else {}
    entries = list(spool.entries(store.spool_dir))
    # Events bd hooks left next to themselves when they ran inside a sandboxed agent: ids only.
    for d in beads_dirs.values():
        entries += [(f"{spool.PENDING_PREFIX}{sid}", p, ev, err)
                    for sid, p, ev, err in spool.entries(d / "hooks" / spool.PENDING_DIR)]
    entries.sort(key=lambda e: e[1].name)  # names start with the time: oldest first
    if any(ev and ev.get("kind") == "bead_close" for _s, _p, ev, _e in entries):
        index.sync()  # what gt appended since the last run, no more
    # Claude's Stop fires every turn: only the newest stop event of a session needs parsing.
    last_stop: dict[str, str] = {}
    for sid, _p, ev, _err in entries:
        if ev and ev.get("kind") == "session_stop":
            k = (ev.get("payload") or {}).get("transcript_path") or (ev.get("payload") or {}).get("session_id") or sid
            last_stop[str(k)] = sid
    it = entries
    if progress:
        from tqdm import tqdm

        it = tqdm(entries, desc="spool", unit="event")
    for spool_id, path, ev, err in it:
        report.events += 1
        if store.spool_done(spool_id):
            path.unlink(missing_ok=True)  # committed earlier, killed before the unlink
            continue
        with store.tx():
            try:
                if err:
                    raise GtExtError(err)
                if (ev.get("stdin") or {}).get("truncated"):
                    # The hook kept none of an oversized stdin; a bead close still has its id in argv.
                    msg = (f"{path.name}: the hook's stdin was over {ev['stdin'].get('limit_bytes')} bytes "
                           "and was not spooled")
                    report.errors.append(msg)
                    log.warning("%s", msg)
                kind = ev.get("kind")
                if spool_id.startswith(spool.PENDING_PREFIX):
                    ev = _trusted_bead_close(ev, beads_dirs)
                if kind == "bead_close":
                    _handle_bead_close(ing, ev, index, town_root, projects, report)
                elif kind in ("session_stop", "session_shutdown"):
                    k = (ev.get("payload") or {}).get("transcript_path") or (ev.get("payload") or {}).get("session_id") or spool_id
                    if last_stop.get(str(k)) == spool_id:
                        _handle_session_stop(ing, ev, projects, report)
                else:
                    raise GtExtError(f"{path.name}: unknown spool event kind {kind!r}")
            except GtExtError as e:
                report.errors.append(str(e))
                log.error("spool %s: %s", spool_id, e)
            store.mark_spool_done(spool_id)
        if _CRASH_AFTER and report.events >= _CRASH_AFTER:
            os._exit(137)  # fault injection for tests: die after the commit, before the unlink
        path.unlink(missing_ok=True)
    report.flags = ing.finish()
    return report


# --- batch collection ----------------------------------------------------------------------------
def scan_transcripts(store: Store, projects: Path | None = None, progress: bool = False,
                     town_root: Path | None = None, pi_dir: Path | None = None) -> ProcessReport:
    """Take every agent session not taken before (wisps, bead-less sessions): Claude and node0
    transcripts under `projects` and pi session files under `<pi agent dir>/sessions/`.

    Role, rig and actor come from a bead link when one exists, else from the town's
    `session_start` event of that session, else (pi) from the work dir in the session header.
    A session a hook already spooled is not taken twice (same source key, same content hash)."""
    projects = projects or claude_projects_dir()
    report = ProcessReport()
    files = sorted(projects.glob("*/*.jsonl")) if projects.is_dir() else []
    files += pi_session_files(pi_dir)
    roots = transcript_roots(projects) + ([(pi_dir / "sessions").resolve()] if pi_dir else [])
    files = [f for f in files if inside_roots(f, roots)]  # a symlink out of the folder is not a session
    with process_lock(store):
        index = EventIndex(store, town_root)
        index.sync()
        started = index.all_session_starts()
        ing = Ingestor(store)
        it = files
        if progress:
            from tqdm import tqdm

            it = tqdm(files, desc="transcripts", unit="file")
        for f in it:
            header = pi_header(f)
            sid = header["id"] if header is not None else f.stem
            with store.tx():
                link = store.link(sid) or {}
                ev = started.get(sid, {})
                actor = ev.get("actor") or (actor_from_cwd(header.get("cwd"), town_root) if header else None)
                tags = Tags(session=sid, role=role_from_actor(ev.get("role")) or role_from_actor(actor),
                            rig=rig_from_actor(actor), user=actor).merged(link)
                ingest_transcript(ing, f, tags, report)
        report.flags = ing.finish()
    return report


def capture_panes(store: Store, sessions: list[str] | None = None, tmux: str = "tmux",
                  socket: str | None = None) -> ProcessReport:
    """Capture live tmux panes (`capture-pane -p -J`) of gt agent sessions and store them.

    A pane is keyed by session name and content hash: capturing an unchanged pane again is a no-op,
    and a pane that grew replaces its earlier capture."""
    report = ProcessReport()
    base = [tmux, *(["-L", socket] if socket else [])]
    if sessions is None:
        try:
            out = subprocess.run([*base, "list-sessions", "-F", "#{session_name}"], capture_output=True,
                                 text=True, timeout=10)
        except (FileNotFoundError, subprocess.TimeoutExpired) as e:
            raise GtExtError(f"tmux not available: {type(e).__name__}") from None
        sessions = [s for s in out.stdout.split() if s] if out.returncode == 0 else []
    with process_lock(store):
        ing = Ingestor(store)
        for name in sessions:
            cp = subprocess.run([*base, "capture-pane", "-p", "-J", "-S", "-", "-t", name], capture_output=True,
                                text=True, timeout=10)
            if cp.returncode != 0:
                report.errors.append(f"tmux session {name}: capture-pane failed")
                continue
            text = cp.stdout
            h = hashlib.sha256(text.encode()).hexdigest()
            src = Source("pane", f"pane:{name}", h, group=name)
            tags = Tags(role=role_from_actor(name), session=name)
            with store.tx():
                try:
                    parsed = parse_pane_text(text, f"tmux session {name}")
                except GtExtError as e:
                    report.errors.append(str(e))
                    continue  # an idle pane with no turns yet is not an error worth quarantining
                r = ing.ingest(parsed.messages, tags, src)
                report.sessions += 1
                for st, ids in r.inserted.items():
                    report.stored[st] = report.stored.get(st, 0) + len(ids)
        report.flags = ing.finish()
    return report


def add_files(store: Store, paths: list[Path], role: str | None = None, task: str | None = None,
              rig: str | None = None, outcome: str | None = None, town_root: Path | None = None) -> ProcessReport:
    """`corpus add`: curated chat JSON/JSONL/markdown (or Claude/pi transcripts) with optional tags.

    Every file is parsed, and every example's role settled, before anything is stored, so one bad
    file stores nothing (and says which). The role is `role`, else the file's own (`role:` in
    markdown front matter, "role" in JSON), else the gt role of a transcript's work dir inside
    `town_root`; an example with none is refused: it could never be exported."""
    parsed: list[tuple[Path, list[ParsedSession], str]] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            raise GtExtError(f"{p}: is a folder; pass the example files (e.g. {p}/*.jsonl)")
        parsed.append((p, parse_chat_file(p), sha256_file(p) if p.is_file() else ""))
    roles: dict[tuple[int, int], str] = {}
    missing = []
    for n, (p, sessions, _h) in enumerate(parsed):
        for i, s in enumerate(sessions):
            got = role or s.meta.get("role") or role_from_actor(actor_from_cwd(s.cwd, town_root))
            if got and check_role_tag(str(got)) is None:
                raise GtExtError(f"{p}{f' example {i + 1}' if len(sessions) > 1 else ''}: unknown role {got!r} "
                                 f"(roles: {', '.join(ROLES)})")
            if not got:
                missing.append(f"{p}" + (f" (example {i + 1})" if len(sessions) > 1 else ""))
            else:
                roles[(n, i)] = check_role_tag(str(got))
    if missing:
        raise GtExtError(f"no role for {missing[0]}{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}: "
                         "pass --role R, or set it in the file (markdown front matter `role: R`, JSON \"role\")")
    report = ProcessReport()
    with process_lock(store):
        ing = Ingestor(store)
        with store.tx():
            for n, (p, sessions, h) in enumerate(parsed):
                for i, s in enumerate(sessions):
                    meta = s.meta
                    kind = _FORMAT_SOURCES.get(s.format) or (
                        "markdown" if p.suffix.lower() in (".md", ".markdown") else "curated")
                    tags = Tags(role=roles[(n, i)], task=task or meta.get("task"), rig=rig or meta.get("rig"),
                                bead=meta.get("bead"), session=s.session or f"{p.name}#{i}",
                                user=meta.get("user") or meta.get("actor"), model=meta.get("model"),
                                outcome=outcome or meta.get("outcome") or "unknown", time=s.time or None)
                    src = Source(kind, f"file:{h}#{i}", h, group=f"file:{p.name}")
                    r = ing.ingest(s.messages, tags, src)
                    report.sessions += 1
                    report.duplicates += r.duplicates
                    where = str(p) + (f" (example {i + 1})" if len(sessions) > 1 else "")
                    for st, ids in r.inserted.items():
                        report.stored[st] = report.stored.get(st, 0) + len(ids)
                        for ex_id in ids:
                            reason = store.db.execute("SELECT reason FROM examples WHERE id = ?", (ex_id,)).fetchone()[0]
                            report.outcomes.append({"file": where, "id": ex_id, "status": st, "reason": reason})
                    if r.unchanged:
                        report.outcomes.append({"file": where, "id": None, "status": "unchanged",
                                                "reason": "this file was added before, unchanged"})
                    for _ in range(r.duplicates):
                        report.outcomes.append({"file": where, "id": None, "status": "duplicate",
                                                "reason": "the same example is already in the corpus"})
        report.flags = ing.finish()
    return report
