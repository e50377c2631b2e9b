"""`gt-ext prefs sling BEAD --models A,B`: the same bead to two node0 agents, each isolated.

For each side (a, b) the bead gets:
- a Dolt branch `prefs-<id>-<side>` of the rig's beads database, which the agent's bd reaches
  through a `BranchProxy` (its beads folder names the proxy's port), so its bead writes land on
  that branch only;
- a git branch `prefs/<id>/<side>` of the rig's repository, checked out in a clone of its own
  (`<rig>/prefs/<id>/<side>/work`; its commits stay there until the sling fetches the branch
  back, so an agent whose sandbox writes only its work dir can commit, and touches no other
  branch);
- the agent command gt would launch (`node0-inference --model REF`, with GT_ROLE, GT_RIG,
  BD_ACTOR, GT_ROOT), given the bead as its first prompt and stopped at the time limit.

Both agents run at the same time. When both have stopped, each outcome is measured (transcript,
the bead on its branch, new beads and dependencies, commits, tests, time, tokens, failure modes)
and the comparison waits for `gt-ext prefs pick`. Anything that fails before that removes every
branch and worktree it made.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gt_ext.errors import GtExtError
from gt_ext.gastown.branches import BeadsDatabase, branch_beads_dir, branch_env
from gt_ext.gastown.branchproxy import BranchProxy
from gt_ext.gastown.town import STATE_DIRS, Town
from gt_ext.gastown.worktree import RigRepo
from gt_ext.prefs import outcome as measure
from gt_ext.prefs.record import LABELS, Comparison, Outcome, PrefsStore
from gt_ext.procgroup import stop_groups
from gt_ext.roles import check_role

log = logging.getLogger(__name__)

TEST_OUTPUT_CHARS = 2000


@dataclass
class SlingOptions:
    """Limits and settings of one A/B run."""

    role: str = "polecat"
    timeout_s: float = 600.0  # per agent, wall clock
    test_cmd: str | None = None  # None: detect from the repository; "": no tests
    test_timeout_s: float = 300.0
    max_steps: int = 8
    max_new_tokens: int = 384
    backend: str = "auto"
    quantize: str = "int8"  # the agent's PyTorch backend: int8 linears or none (exact fp32)


def detect_test_cmd(worktree: Path) -> str | None:
    """The repository's test command: `make test`, pytest, `npm test` or `go test ./...` (None: none)."""
    mk = worktree / "Makefile"
    if mk.is_file() and any(ln.startswith("test:") for ln in mk.read_text(errors="replace").splitlines()):
        return "make test"
    if (worktree / "pytest.ini").is_file() or (worktree / "tests").is_dir() or any(worktree.glob("test_*.py")):
        return f"{sys.executable} -m pytest -q"
    pkg = worktree / "package.json"
    if pkg.is_file():
        try:
            if (json.loads(pkg.read_text()).get("scripts") or {}).get("test"):
                return "npm test"
        except json.JSONDecodeError:
            pass
    if (worktree / "go.mod").is_file():
        return "go test ./..."
    return None


def run_tests(cmd: str, worktree: Path, env: dict[str, str], timeout_s: float) -> tuple[int | None, str]:
    """(exit code or None on timeout, output tail) of the test command in a worktree."""
    proc = subprocess.Popen(["bash", "-c", cmd], cwd=worktree, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return None, out.decode("utf-8", "replace")[-TEST_OUTPUT_CHARS:]
    return proc.returncode, out.decode("utf-8", "replace")[-TEST_OUTPUT_CHARS:]


def bead_prompt(issue: dict[str, Any], rig: str) -> str:
    """The first prompt both agents get (the same text, so their transcripts share an opening)."""
    iid, title = issue["id"], issue.get("title") or ""
    desc = (issue.get("description") or "").strip()
    return (f"Your hooked bead in rig {rig}: {iid} \"{title}\".\n" + (f"{desc}\n" if desc else "") +
            "Work in the current folder on its branch; run the tests, commit your change with a message that "
            f"names {iid} (never skip hooks), then close the bead: bd close {iid} --reason \"<what you did>\".")


def _rig_of(town: Town, bead: str, rig: str | None) -> str:
    if rig:
        town.rig(rig)
        return rig
    prefix = bead.rsplit("-", 1)[0] if "-" in bead else ""
    found = [r.name for r in town.rigs() if r.prefix and r.prefix == prefix]
    if len(found) != 1:
        raise GtExtError(f"bead {bead}: cannot tell its rig from the prefix {prefix!r}; pass --rig")
    return found[0]


def _resolve_models(models: list[str], town: Town) -> list[str]:
    """Each model reference made concrete (registry `name:ver`), or a one-line error naming it."""
    from gt_ext.models.refs import resolve

    if len(models) != 2 or not all(m.strip() for m in models):
        raise GtExtError(f"--models: give exactly two model references, A,B (got {','.join(models) or 'none'})")
    out = []
    for m in models:
        try:
            out.append(resolve(m.strip(), town).ref)
        except GtExtError as e:
            raise GtExtError(f"--models {m}: {e}") from None
    if out[0] == out[1]:
        raise GtExtError(f"--models: {models[0]} and {models[1]} are the same model ({out[0]})")
    return out


def work_folder(town: Town, rig: str, cid: str, label: str) -> Path:
    """Where a side's clone (`work/`) and beads folder (`beads/.beads`) live: in the rig, like a
    polecat's, and outside `<town>/.gt-ext`, which the agent's sandbox hides."""
    return town.rig(rig).root / "prefs" / cid / label


class _Side:
    """One side's resources while the agents run: its record folder (transcript, pane output)
    and its work folder (the clone it works in, the beads folder its bd uses)."""

    def __init__(self, label: str, folder: Path, work: Path):
        self.label = label
        self.folder = folder
        self.worktree = work / "work"
        self.beads_dir = work / "beads" / ".beads"  # made by branch_beads_dir
        self.transcripts = folder / "transcripts"
        self.pane_log = folder / "pane.log"
        self.proxy: BranchProxy | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.wall_s = 0.0
        self.timed_out = False


def _agent_env(base: dict[str, str], town: Town, rig: str, role: str, side: _Side, port: int) -> dict[str, str]:
    """What gt puts in an agent's environment, with bd pointed at the side's branch."""
    env = branch_env({k: v for k, v in base.items() if k not in ("GIT_DIR", "GIT_WORK_TREE")}, side.beads_dir, port)
    env.update({
        "GT_ROLE": role, "GT_RIG": rig, "BD_ACTOR": f"{rig}/polecats/prefs-{side.label}",
        "GT_ROOT": str(town.root), "GT_TOWN_ROOT": str(town.root),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), base.get("PATH", "")]),
    })
    return env


def sling(town: Town, bead: str, models: list[str], rig: str | None = None, opts: SlingOptions | None = None,
          echo: Callable[[str], None] = log.info, env: dict[str, str] | None = None) -> Comparison:
    """Run the A/B comparison of `bead` (see module doc); returns the pending comparison."""
    opts = opts or SlingOptions()
    check_role(opts.role)
    if opts.timeout_s <= 0 or opts.max_steps < 1:
        raise GtExtError("--timeout and --max-steps must be positive")
    base_env = dict(os.environ if env is None else env)
    rig = _rig_of(town, bead, rig)
    refs = _resolve_models(models, town)
    db = BeadsDatabase.for_rig(town, rig)
    issue = db.issue(bead)
    if issue is None:
        raise GtExtError(f"no bead {bead} in rig {rig}'s beads (database {db.database})")
    if issue.get("status") == "closed":
        raise GtExtError(f"bead {bead} is already closed")
    repo = RigRepo.for_rig(town, rig, env=base_env)
    store = PrefsStore.for_town(town.root)
    with store.lock():
        if (other := store.open_for_bead(bead)) is not None:
            hint = " (interrupted: `gt-ext prefs drop " + other.id + "`)" if other.effective_status() == "interrupted" else ""
            raise GtExtError(f"bead {bead} is already in comparison {other.id} ({other.effective_status()}){hint}")
        cid = store.new_id(bead)
        into = repo.default_branch()
        cmp = Comparison(id=cid, bead=bead, rig=rig, role=opts.role, title=issue.get("title") or "",
                         prompt=bead_prompt(issue, rig), models=[m.strip() for m in models], pid=os.getpid(),
                         database=db.database,
                         base={"git_branch": into, "git": repo.head(into) or "", "dolt": db.branches()["main"]})
        store.save(cmp)  # claims the bead
    sides = {lb: _Side(lb, store.folder(cid) / lb, work_folder(town, rig, cid, lb)) for lb in LABELS}
    try:
        base_issues = {i["id"] for i in db.issues()}
        base_deps = {(d["issue_id"], d["depends_on_id"], d.get("type")) for d in db.dependencies()}
        for (lb, side), model, ref in zip(sides.items(), cmp.models, refs, strict=True):
            dolt_branch, git_branch = f"prefs-{cid}-{lb}", f"prefs/{cid}/{lb}"
            cmp.outcomes[lb] = Outcome(label=lb, model=model, model_ref=ref, dolt_branch=dolt_branch,
                                       git_branch=git_branch, worktree=str(side.worktree),
                                       beads_dir=str(side.beads_dir))
            db.create_branch(dolt_branch, "main")
            repo.add_clone(side.worktree, git_branch, cmp.base["git"])
        store.save(cmp)
        test_cmd = opts.test_cmd if opts.test_cmd is not None else detect_test_cmd(sides["a"].worktree)
        base_rc: int | None = None
        if test_cmd:
            echo(f"tests on the base commit: {test_cmd}")
            base_rc, _ = run_tests(test_cmd, sides["a"].worktree, base_env, opts.test_timeout_s)
        _run_agents(cmp, sides, town, rig, db, opts, base_env, echo)
        for lb, side in sides.items():
            _measure(cmp.outcomes[lb], side, cmp, db, repo, base_issues, base_deps, test_cmd, base_rc, opts, base_env)
            o = cmp.outcomes[lb]
            echo(f"{lb} ({o.model}): {o.wall_s:.0f} s, {o.tokens.get('output', 0)} tokens, "
                 f"{len(o.commits)} commit(s), bead {(o.bead or {}).get('status', '?')}, "
                 f"failures: {', '.join(o.failure_modes) or 'none'}")
        cmp.status = "pending"
        cmp.pid = None
        store.save(cmp)
        return cmp
    except BaseException as e:
        for side in sides.values():
            _stop_agent(side)
        _remove_branches(cmp, db, repo)
        cmp.status, cmp.pid = "failed", None
        cmp.history.append({"time": cmp.updated, "event": "sling failed", "error": str(e).splitlines()[0][:300]
                            if str(e) else e.__class__.__name__})
        store.save(cmp)
        raise


def _run_agents(cmp: Comparison, sides: dict[str, _Side], town: Town, rig: str, db: BeadsDatabase,
                opts: SlingOptions, base_env: dict[str, str], echo: Callable[[str], None]) -> None:
    """Start both agents, each behind its branch proxy, and wait until both stop (or time out)."""
    rig_beads = db.beads_dir
    assert rig_beads is not None
    try:
        for lb, side in sides.items():
            o = cmp.outcomes[lb]
            side.proxy = BranchProxy(db.port, db.database, o.dolt_branch, host=db.host).start()
            branch_beads_dir(rig_beads, side.beads_dir.parent, side.proxy.port)
            side.transcripts.mkdir(parents=True, exist_ok=True)
            argv = [sys.executable, "-m", "gt_ext.serve.agent", "--model", o.model_ref,
                    "--workdir", str(side.worktree), "--transcripts", str(side.transcripts),
                    "--max-steps", str(opts.max_steps), "--turn-timeout", str(opts.timeout_s),
                    "--max-new-tokens", str(opts.max_new_tokens), "--backend", opts.backend,
                    "--quantize", opts.quantize,
                    # Not a session gt launched: registering it (gt prime --hook) would log it in
                    # the town's events and let gt record this side's proxy port as the town's Dolt port.
                    "--no-register", cmp.prompt]
            with open(side.pane_log, "wb") as pane:
                side.proc = subprocess.Popen(argv, cwd=side.worktree, stdin=subprocess.DEVNULL, stdout=pane,
                                             stderr=subprocess.STDOUT, start_new_session=True,
                                             env=_agent_env(base_env, town, rig, cmp.role, side, side.proxy.port))
            side.started = time.monotonic()
            echo(f"{lb}: {o.model_ref} started on beads branch {o.dolt_branch}, git branch {o.git_branch}")
        deadline = {lb: s.started + opts.timeout_s for lb, s in sides.items()}
        while any(s.proc is not None and s.proc.poll() is None for s in sides.values()):
            for lb, side in sides.items():
                if side.proc is not None and side.proc.poll() is None and time.monotonic() > deadline[lb]:
                    side.timed_out = True
                    echo(f"{lb}: time limit of {opts.timeout_s:.0f} s reached, stopping it")
                    _stop_agent(side)
            time.sleep(0.2)
        for side in sides.values():
            side.wall_s = time.monotonic() - side.started
    finally:
        for side in sides.values():
            if side.proxy is not None:
                side.proxy.stop()


def _stop_agent(side: _Side) -> None:
    """SIGTERM the agent's process group (the agent closes its transcript), SIGKILL after 10 s."""
    p = side.proc
    if p is None or p.poll() is not None:
        return
    stop_groups([p], grace_s=10)


def _transcript(side: _Side) -> Path | None:
    found = sorted(side.transcripts.rglob("*.jsonl"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def transcript_messages(path: Path | None, role: str, rig: str) -> list[dict[str, str]]:
    """A transcript as corpus messages, opened by the role's system turn (as the corpus stores it)."""
    from gt_ext.corpus.parsers import parse_claude_jsonl
    from gt_ext.corpus.tags import system_prompt

    if path is None or not path.is_file():
        return []
    try:
        parsed = parse_claude_jsonl(path)
    except GtExtError as e:  # a transcript cut by a kill: measured as no transcript, never fatal
        log.warning("%s", e)
        return []
    return [{"role": "system", "content": system_prompt(role, rig)}, *parsed.messages]


def _tokens(path: Path | None) -> dict[str, int]:
    tok = {"input": 0, "output": 0}
    if path is None or not path.is_file():
        return tok
    for line in path.read_text(errors="replace").split("\n"):
        try:
            usage = (json.loads(line).get("message") or {}).get("usage") or {}
        except (json.JSONDecodeError, AttributeError):
            continue
        tok["input"] += int(usage.get("input_tokens") or 0)
        tok["output"] += int(usage.get("output_tokens") or 0)
    return tok


def _measure(o: Outcome, side: _Side, cmp: Comparison, db: BeadsDatabase, repo: RigRepo, base_issues: set[str],
             base_deps: set[tuple], test_cmd: str | None, base_rc: int | None, opts: SlingOptions,
             env: dict[str, str]) -> None:
    """Fill in one outcome from what the agent left behind."""
    fetched = repo.fetch_from_clone(side.worktree, o.git_branch)
    tpath = _transcript(side)
    o.transcript = str(tpath) if tpath else None
    o.pane_log = str(side.pane_log)
    o.exit_code = side.proc.returncode if side.proc is not None else None
    o.timed_out, o.wall_s = side.timed_out, round(side.wall_s, 2)
    o.tokens = _tokens(tpath)
    o.bead = db.issue(cmp.bead, o.dolt_branch)
    issues = db.issues(o.dolt_branch)
    deps = db.dependencies(o.dolt_branch)
    o.beads_created = sorted(i["id"] for i in issues if i["id"] not in base_issues)
    o.dependencies_added = [d for d in deps if (d["issue_id"], d["depends_on_id"], d.get("type")) not in base_deps]
    o.dolt_commits = len(db.commits_since(o.dolt_branch, cmp.base["dolt"]))
    o.commits = repo.commits(cmp.base["git"], o.git_branch)
    o.head_branch = repo.current_branch(side.worktree) if fetched else None
    # Commits HEAD pointed at in the clone that its branch does not hold: made on another branch.
    o.stray_commits = [c for c in repo.head_reflog(side.worktree) if not repo.contains(o.git_branch, c)]
    # gt's own state in a work dir (`.runtime/session_id`, written when the agent registers its
    # session with `gt prime --hook`) is not the agent's work.
    o.dirty = [p for p in repo.dirty(side.worktree) if p.strip("/").split("/")[0] not in STATE_DIRS]
    if test_cmd:
        rc, out = run_tests(test_cmd, side.worktree, env, opts.test_timeout_s)
        o.tests = {"cmd": test_cmd, "base_rc": base_rc, "rc": rc, "output": out}
    messages = transcript_messages(tpath, cmp.role, cmp.rig)
    o.commands = measure.tool_commands(messages)
    pane = side.pane_log.read_text(errors="replace") if side.pane_log.is_file() else ""
    o.failures = measure.ordered(measure.state_failures(o, pane[-4000:])
                                 + measure.dependency_failures(cmp.bead, issues, deps, o.dependencies_added)
                                 + measure.convention_failures(messages, str(side.worktree)))


def _remove_branches(cmp: Comparison, db: BeadsDatabase, repo: RigRepo, labels: tuple[str, ...] = LABELS) -> list[str]:
    """Delete the Dolt branches, worktrees and git branches of `labels`; what was removed."""
    done = []
    for lb in labels:
        o = cmp.outcomes.get(lb)
        if o is None:
            continue
        try:
            if db.delete_branch(o.dolt_branch):
                done.append(f"beads branch {o.dolt_branch}")
        except GtExtError as e:
            log.warning("could not delete beads branch %s: %s", o.dolt_branch, e)
        work = Path(o.worktree).parent  # the side's work folder: clone + beads folder
        repo.remove_worktree(Path(o.worktree))
        shutil.rmtree(work, ignore_errors=True)
        if work.parent.name == cmp.id and work.parent.is_dir() and not any(work.parent.iterdir()):
            work.parent.rmdir()
        if repo.delete_branch(o.git_branch):
            done.append(f"git branch {o.git_branch}")
    return done
