"""`gt-ext hooks`: install the corpus and RAG hooks that fire on their own.

- beads `on_close`, `on_create` and `on_update` in the town's and every rig's `.beads/hooks/` (an
  existing hook is kept as `<name>.chained` and still runs, with the same arguments and stdin):
  on_close spools the bead for the corpus, and all three queue a RAG reindex of the bead
  (`<town>/.rag/spool/`) and start `gt-ext rag reindex --trigger`, so an agent's next prompt sees it;
- a session-shutdown hook under `<town>/.corpus/hooks/`, wired as Claude Code's `Stop` hook through
  gt's hooks-override layer (`~/.gt/hooks-overrides/<target>.json`, or `$GT_HOME/.gt/...` as gt
  reads it, which `gt hooks sync` merges into every managed `.claude/settings.json`, so it survives
  syncs), and as pi's `session_shutdown` through a pi extension in pi's global extensions folder
  (`$PI_CODING_AGENT_DIR/extensions/` or `~/.pi/agent/extensions/`, which pi discovers in every
  session; gt's own `.pi/extensions/gastown-hooks.js` stays untouched). The extension runs the hook
  of the town the agent works in (GT_TOWN_ROOT / GT_ROOT) with pi's session file.

The hooks only spool (see `gt_ext.corpus.spool`, `gt_ext.rag.queue`); `gt-ext corpus process` and
`gt-ext rag reindex` do the work.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from gt_ext.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from gt_ext.corpus.spool import PROCESS_ON_END, processor_argv
from gt_ext.errors import GtExtError
from gt_ext.gastown import hooks
from gt_ext.rag.queue import queue_dir, reindex_trigger_argv

app = typer.Typer(help="Install the corpus and RAG hooks (bead on_create/on_update/on_close, session shutdown).",
                  no_args_is_help=True, add_completion=False)

MARKER = "gt-ext-hook: corpus spool"
RAG_HOOKS = ("on_create", "on_update")  # on_close queues RAG events too
HOOK_SOURCE = Path(__file__).resolve().parent.parent / "hooks" / "on_close"
PI_EXTENSION_SOURCE = HOOK_SOURCE.parent / "pi_extension.ts"
PI_EXTENSION_NAME = "gt-ext-corpus.ts"
PI_MARKER = "gt-ext-hook: corpus spool (pi session_shutdown)"
# Role-level targets of gt's hooks-override layer (a rig-specific one would be `<rig>__<role>`).
OVERRIDE_TARGETS = ("mayor", "deacon", "witness", "refinery", "polecats", "crew")
# Stop takes no matcher in Claude Code; "*" keeps our entry apart from gt's own ("" matcher) in
# gt's per-matcher merge, where the same matcher would replace the base entry.
STOP_MATCHER = "*"


def _script(name: str) -> bytes:
    """The hook script with its interpreter pinned to this Python (bd runs hooks with a bare env)."""
    try:
        text = HOOK_SOURCE.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GtExtError(f"hook source {HOOK_SOURCE} is missing: reinstall gastown-finetune") from None
    lines = text.split("\n", 1)
    return (f"#!{sys.executable}\n" + lines[1]).encode()


def _town(town: Path | None):
    from gt_ext.gastown.town import Town, find_town, is_town

    if town is not None:
        if not is_town(town):
            raise GtExtError(f"{town} is not a Gas Town root (no mayor/town.json)")
        return Town(Path(town).resolve())
    t = find_town()
    if t is None:
        raise GtExtError("no town found from the current folder: pass --town DIR (or set GT_TOWN_ROOT)")
    return t


def install_bead_hook(beads_dir: Path, spool: Path, processor: list[str] | None = None, hook: str = "on_close",
                      rag_queue: Path | None = None, rag_processor: list[str] | None = None) -> str:
    """Install our script as `hook` (on_close, on_create or on_update) into one beads folder;
    returns installed | updated | chained (a foreign hook of that name now runs as `<hook>.chained`).

    `processor`: argv the hook starts (detached) after spooling; None leaves processing to
    `gt-ext corpus process`. `rag_queue`: where the bead hooks queue RAG reindex events (None: they
    queue none), `rag_processor`: what they start for them (`gt-ext rag reindex --trigger`)."""
    def js(v: list[str] | None) -> bytes | None:
        return (json.dumps(v) + "\n").encode() if v else None

    sidecars = {".gt-ext-spool": (str(spool) + "\n").encode(), ".gt-ext-process": js(processor),
                ".gt-ext-rag": (str(rag_queue) + "\n").encode() if rag_queue else None,
                ".gt-ext-rag-process": js(rag_processor) if rag_queue else None}
    return hooks.install_bead_hook(beads_dir, hook, _script(hook), MARKER, sidecars)


def pi_agent_dir() -> Path:
    """pi's agent folder: $PI_CODING_AGENT_DIR, else ~/.pi/agent."""
    from gt_ext.corpus.collect import pi_agent_dir as agent_dir

    return agent_dir()


def install_pi_extension(agent_dir: Path) -> str:
    """Put our `session_shutdown` extension into `<agent_dir>/extensions/`; returns installed |
    updated | present. Other extensions there are left alone; a foreign file of our name is an error."""
    try:
        text = PI_EXTENSION_SOURCE.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GtExtError(f"pi extension source {PI_EXTENSION_SOURCE} is missing: reinstall gastown-finetune") from None
    target = Path(agent_dir) / "extensions" / PI_EXTENSION_NAME
    state = "installed"
    if target.exists():
        try:
            old = target.read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise GtExtError(f"{target}: cannot read ({e.strerror})") from None
        if PI_MARKER not in old:
            raise GtExtError(f"{target} exists and is not ours: move it away first")
        if old == text:
            return "present"
        state = "updated"
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, text, mode=0o644)
    return state


def install_stop_override(gt_home: Path, target: str, command: str) -> str:
    """Our Claude `Stop` entry in gt's hooks-override file of `target` (see `gastown.hooks`)."""
    return hooks.add_hook_override(gt_home, target, "Stop", STOP_MATCHER, command)


def install(town: Path | None = None, gt_home: Path | None = None, claude_stop: bool = True,
            auto_process: bool = True, pi: bool | None = None, pi_dir: Path | None = None,
            rag: bool = True) -> dict[str, Any]:
    """Install every corpus hook of a town; idempotent. Returns what was done per place.

    `auto_process`: bead closes also start the processor in the background (detached), so a closed
    bead's session lands in the corpus within seconds without anyone running `corpus process`.
    `rag`: bd's on_create/on_update/on_close also queue a RAG reindex of the bead (and, with
    `auto_process`, start `gt-ext rag reindex --trigger`), so agents retrieve it at their next prompt.
    `pi`: install pi's `session_shutdown` extension into `pi_dir` (default `pi_agent_dir()`);
    None installs it when that folder exists (pi is set up on this machine)."""
    t = _town(town)
    store = t.root / ".corpus"
    spool = store / "spool"
    spool.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"town": str(t.root), "spool": str(spool), "beads": {}, "overrides": {}}
    dirs = t.beads_dirs()
    if not dirs:
        raise GtExtError(f"town {t.root} has no beads folders (.beads) to hook")
    processor = processor_argv(store, t.root) if auto_process else None
    report["auto_process"] = auto_process
    rag_queue = queue_dir(t.root) if rag else None
    rag_processor = reindex_trigger_argv(t.root) if rag and auto_process else None
    report["rag"] = {"queue": str(rag_queue) if rag_queue else None, "hooks": {}}
    for name, d in sorted(dirs.items()):
        report["beads"][name] = install_bead_hook(d, spool, processor, "on_close", rag_queue, rag_processor)
        if rag:
            report["rag"]["hooks"][name] = {h: install_bead_hook(d, spool, processor, h, rag_queue, rag_processor)
                                            for h in RAG_HOOKS}
    hooks_dir = store / "hooks"
    hooks_dir.mkdir(parents=True, exist_ok=True)
    shutdown = hooks_dir / "session_shutdown"
    atomic_write_bytes(shutdown, _script("session_shutdown"), mode=0o755)
    atomic_write_text(hooks_dir / ".gt-ext-spool", str(spool) + "\n", mode=0o644)
    # A node0 session that ends starts the processor itself (serve.agent.spool_session_end);
    # Claude's Stop fires every turn, so its hook only spools.
    on_end = hooks_dir / PROCESS_ON_END
    if processor:
        atomic_write_json(on_end, processor)
    elif on_end.exists():
        on_end.unlink()
    report["session_shutdown"] = str(shutdown)
    if claude_stop:
        home = gt_home or hooks.default_gt_home()
        for target in OVERRIDE_TARGETS:
            # Claude runs hook commands through a shell: quote a town path with spaces.
            report["overrides"][target] = install_stop_override(home, target, shlex.quote(str(shutdown)))
    agent_dir = Path(pi_dir) if pi_dir else pi_agent_dir()
    if pi or (pi is None and agent_dir.is_dir()):
        report["pi"] = {"extension": str(agent_dir / "extensions" / PI_EXTENSION_NAME),
                        "state": install_pi_extension(agent_dir)}
    else:
        report["pi"] = None
    return report


def status(town: Path | None = None) -> dict[str, Any]:
    """Which beads folders carry our hook, and how many events wait in the spool."""
    t = _town(town)
    out: dict[str, Any] = {"town": str(t.root), "beads": {}}
    for name, d in sorted(t.beads_dirs().items()):
        st = hooks.bead_hook_state(d, "on_close", MARKER)
        row: dict[str, Any] = {"on_close": st["state"]}
        row |= {h: hooks.bead_hook_state(d, h, MARKER)["state"] for h in RAG_HOOKS}
        row |= {"chained": st["chained"], "rag": (hooks.bead_hooks_dir(d) / ".gt-ext-rag").is_file()}
        out["beads"][name] = row
    spool = t.root / ".corpus" / "spool"
    out["spool_pending"] = len(list(spool.glob("*.json"))) if spool.is_dir() else 0
    return out


@app.command("install")
def install_cmd(town: Annotated[Path | None, typer.Option(help="Town root (default: found from the current folder).")] = None,
                gt_home: Annotated[Path | None, typer.Option(help="gt's user folder holding hooks-overrides/ (default ~/.gt).")] = None,
                claude_stop: Annotated[bool, typer.Option(help="Also add the Claude Code Stop hook via gt's override layer.")] = True,
                auto_process: Annotated[bool, typer.Option(help="Bead closes start the processor in the background.")] = True,
                pi: Annotated[bool | None, typer.Option("--pi/--no-pi", help="Add pi's session_shutdown extension (default: when pi's agent folder exists).", show_default=False)] = None,
                pi_dir: Annotated[Path | None, typer.Option(help="pi's agent folder (default $PI_CODING_AGENT_DIR or ~/.pi/agent).")] = None,
                rag: Annotated[bool, typer.Option(help="bd on_create/on_update/on_close also queue a RAG reindex of the bead.")] = True,
                as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Install on_close (and on_create/on_update for RAG) into every beads folder of the town, and
    the session-shutdown hook."""
    rep = install(town, gt_home, claude_stop, auto_process, pi, pi_dir, rag)
    if as_json:
        print(json.dumps(rep, indent=2))
        return
    for name, st in rep["beads"].items():
        extra = "".join(f", {h} {v}" for h, v in rep["rag"]["hooks"].get(name, {}).items())
        print(f"beads {name}: on_close {st}{extra}")
    if rep["rag"]["queue"]:
        print(f"RAG reindex events: {rep['rag']['queue']}")
    for tgt, st in rep["overrides"].items():
        print(f"Claude Stop hook for {tgt}: {st}")
    print(f"session shutdown hook: {rep['session_shutdown']}")
    if rep["pi"]:
        print(f"pi session_shutdown extension: {rep['pi']['extension']} ({rep['pi']['state']})")
    else:
        print("pi: no agent folder found (pass --pi to install its session_shutdown extension anyway)")
    if rep["overrides"]:
        print("run `gt hooks sync` to push the Stop hook into the agents' .claude/settings.json")
    if rep["auto_process"]:
        print("bead closes start `gt-ext corpus process --trigger` in the background (log: <town>/.corpus/process.log)")
    else:
        print("process the spool with: gt-ext corpus process")


@app.command("status")
def status_cmd(town: Annotated[Path | None, typer.Option(help="Town root.")] = None,
               as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show where the hooks are installed and what waits in the spool."""
    s = status(town)
    if as_json:
        print(json.dumps(s, indent=2))
        return
    for name, b in s["beads"].items():
        print(f"beads {name}: on_close {b['on_close']}{' (+ chained)' if b['chained'] else ''}, "
              f"on_create {b['on_create']}, on_update {b['on_update']}{', RAG events on' if b['rag'] else ''}")
    print(f"spool pending: {s['spool_pending']}")
