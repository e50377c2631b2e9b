"""`gt-ext hooks`: install the corpus hooks that fire on their own.

- beads `on_close` in the town's and every rig's `.beads/hooks/` (an existing hook is kept as
  `on_close.chained` and still runs, with the same arguments and stdin);
- a session-shutdown hook under `<town>/.corpus/hooks/`, wired as Claude Code's `Stop` hook through
  gt's hooks-override layer (`~/.gt/hooks-overrides/<target>.json`, or `$GT_HOME/.gt/...` as gt
  reads it, which `gt hooks sync` merges into every managed `.claude/settings.json`, so it survives
  syncs), and as pi's `session_shutdown` through a pi extension in pi's global extensions folder
  (`$PI_CODING_AGENT_DIR/extensions/` or `~/.pi/agent/extensions/`, which pi discovers in every
  session; gt's own `.pi/extensions/gastown-hooks.js` stays untouched). The extension runs the hook
  of the town the agent works in (GT_TOWN_ROOT / GT_ROOT) with pi's session file.

The hooks only spool (see `gt_ext.corpus.spool`); `gt-ext corpus process` does the work.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from gt_ext.atomic import atomic_write_bytes, atomic_write_text
from gt_ext.errors import GtExtError
from gt_ext.gastown import hooks

app = typer.Typer(help="Install the corpus hooks (bead on_close, session shutdown).", no_args_is_help=True,
                  add_completion=False)

MARKER = "gt-ext-hook: corpus spool"
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


def _processor_argv(store: Path, town: Path) -> list[str]:
    """The command a hook starts to process the spool in the background."""
    return [sys.executable, "-m", "gt_ext.cli", "corpus", "--store", str(store), "--town", str(town), "process", "--trigger"]


def install_bead_hook(beads_dir: Path, spool: Path, processor: list[str] | None = None) -> str:
    """Install `on_close` into one beads folder; returns installed | updated | chained.

    `processor`: argv the hook starts (detached) after spooling; None leaves processing to
    `gt-ext corpus process`."""
    sidecars = {".gt-ext-spool": (str(spool) + "\n").encode(),
                ".gt-ext-process": (json.dumps(processor) + "\n").encode() if processor else None}
    return hooks.install_bead_hook(beads_dir, "on_close", _script("on_close"), MARKER, sidecars)


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
            auto_process: bool = True, pi: bool | None = None, pi_dir: Path | None = None) -> dict[str, Any]:
    """Install every corpus hook of a town; idempotent. Returns what was done per place.

    `auto_process`: bead closes also start the processor in the background (detached), so a closed
    bead's session lands in the corpus within seconds without anyone running `corpus process`.
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
    processor = _processor_argv(store, t.root) if auto_process else None
    report["auto_process"] = auto_process
    for name, d in sorted(dirs.items()):
        report["beads"][name] = install_bead_hook(d, spool, processor)
    hooks_dir = store / "hooks"
    hooks_dir.mkdir(parents=True, exist_ok=True)
    shutdown = hooks_dir / "session_shutdown"
    atomic_write_bytes(shutdown, _script("session_shutdown"), mode=0o755)
    atomic_write_text(hooks_dir / ".gt-ext-spool", str(spool) + "\n", mode=0o644)
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
        out["beads"][name] = {"on_close": st["state"], "chained": st["chained"]}
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
                as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Install on_close into every beads folder of the town, and the session-shutdown hook."""
    rep = install(town, gt_home, claude_stop, auto_process, pi, pi_dir)
    if as_json:
        print(json.dumps(rep, indent=2))
        return
    for name, st in rep["beads"].items():
        print(f"beads {name}: on_close {st}")
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
        print(f"beads {name}: on_close {b['on_close']}{' (+ chained)' if b['chained'] else ''}")
    print(f"spool pending: {s['spool_pending']}")
