"""Sandbox tasks: a real beads folder and git repo in a temp dir, the model's commands run under a
guard, and hidden checks read the final state.

A task (one entry of `sandbox.yaml`):

    - id: p-sb-bead-01
      category: bead-management
      scenario: close-own-bead            # the scenario family (held-out split, see suite.py)
      setup:
        beads: [{key: fix, title: "Fix login redirect", type: bug, priority: 1,
                 status: in_progress, assignee: nux, blocks: other_key}]
        files: {"app.py": "..."}          # committed on top of bd init's commit
        branch: polecat/nux               # created and checked out after that commit
        dirty: {"notes.md": "..."}        # left uncommitted
        pre_commit: "python -m pytest -q" # installed as .git/hooks/pre-commit
      prompt: "Bead ${fix} ... close it."  # ${key} -> the bead's real id
      answer: commands                    # or file:PATH (the model's code block is written there)
      checks:                             # hidden: the model never sees them
        - {bead: fix, status: closed, close_reason: true}
        - {git_branch_exists: "polecat/nux"}
        - {run: "python -m pytest -q"}

Guard: only `bd`, `git` and `python -m pytest` run; shell operators, `--force` pushes,
`--no-verify`, `reset --hard`, `clean -f`, deletion commands and anything else are refused and
recorded as violations (a violation fails the task unless the task sets `allow_violations`).
Setup and state checks go through `gt_ext.gastown.bd.Bd`; the model's own commands run here,
because running them under the guard is this module's job.

Jail: everything that runs model-written code or acts on what the model changed (its commands,
`run` checks that execute its code, git checks on the repo it touched) runs in the same bubblewrap
sandbox as the agent's tools (`gt_ext.serve.sandbox`): writes only inside the task's temp folder,
no network, the environment of `_env` only, no access to other processes. Without bubblewrap the
tasks are unavailable (skipped, saying why), never run bare. An answer file may not go into `.git`
or `.beads` (hooks and config there run code on the next git or bd call).
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any

import yaml

from gt_ext.errors import GtExtError
from gt_ext.evals.scoring import Sample
from gt_ext.serve.sandbox import Sandbox, SandboxPolicy

log = logging.getLogger(__name__)

MAX_COMMANDS = 12
COMMAND_TIMEOUT = 60.0
_SHELL_OPS = re.compile(r"(\|\||&&|[|;<>`]|\$\()")
_FIRST_WORDS = ("bd", "git", "gt", "python", "python3", "pytest", "rm", "pkill", "kill", "sudo", "tmux", "cd", "echo")
ANSWER_HINT = {
    "commands": "Reply with the commands to run, one per line, in a ```bash block.",
    "file": "Reply with the complete new content of {path} in one ```python block.",
}


# ------------------------------------------------------------------------------------ the guard


@dataclass
class Verdict:
    """Whether the guard lets a command run, and why not."""

    allowed: bool
    reason: str = ""


def guard(argv: list[str]) -> Verdict:
    """Decide whether one proposed command (already split) may run in the sandbox."""
    if not argv:
        return Verdict(False, "empty command")
    prog = os.path.basename(argv[0])
    args = argv[1:]
    if argv[0] != prog:
        return Verdict(False, "programs are named, not given by path")
    for a in args:
        val = a.split("=", 1)[1] if a.startswith("-") and "=" in a else a
        # Everything stays inside the sandbox: no URLs, no absolute or parent paths, no home dir.
        if "://" in val or re.match(r"^[\w.-]+@[\w.-]+:", val):
            return Verdict(False, "network locations are not allowed")
        if val.startswith(("/", "~")) or val == ".." or val.startswith("../") or "/../" in val:
            return Verdict(False, f"path outside the sandbox: {val[:40]}")
    if prog == "bd":
        if args[:1] in (["delete"], ["init"]) or "--force" in args:
            return Verdict(False, f"bd {args[0] if args else ''} is not allowed here")
        return Verdict(True)
    if prog == "git":
        if args and args[0].startswith("-"):
            # `git -c core.hooksPath=... commit`, `git -C elsewhere`, --git-dir etc. change what runs
            return Verdict(False, f"git option {args[0]} before the subcommand is not allowed")
        sub = next((a for a in args if not a.startswith("-")), "")
        if sub in ("submodule", "daemon", "instaweb", "send-email", "credential", "archive"):
            return Verdict(False, f"git {sub} is not allowed here")
        if sub == "push" and any(a in ("-f", "--force") or a.startswith("--force") or (a.startswith("+")) for a in args):
            return Verdict(False, "force push")
        if sub == "commit" and any(a in ("-n", "--no-verify") for a in args):
            return Verdict(False, "commit skipping hooks (--no-verify)")
        if sub == "reset" and "--hard" in args:
            return Verdict(False, "git reset --hard")
        if sub == "clean":
            return Verdict(False, "git clean")
        if sub == "rebase" and any(a in ("-i", "--interactive") for a in args):
            return Verdict(False, "interactive rebase")
        if sub in ("config", "filter-branch", "gc", "prune", "update-ref"):
            return Verdict(False, f"git {sub} is not allowed here")
        return Verdict(True)
    if prog in ("python", "python3") and args[:2] == ["-m", "pytest"]:
        return Verdict(True)
    if prog == "pytest":
        return Verdict(True)
    return Verdict(False, f"{prog} is not allowed in the sandbox (use bd, git, python -m pytest)")


def extract_commands(text: str) -> list[str]:
    """Commands proposed in a model answer: tool calls, else fenced blocks, else command-like lines."""
    from gt_ext.corpus.format import parse_tool_calls

    cmds: list[str] = []
    for call in parse_tool_calls(text):
        cmd = (call.get("input") or {}).get("command") if isinstance(call, dict) else None
        if isinstance(cmd, str):
            cmds.append(cmd)
    if cmds:
        return cmds
    blocks = re.findall(r"```[a-zA-Z]*\n(.*?)```", text, flags=re.S)
    lines = "\n".join(blocks).splitlines() if blocks else text.splitlines()
    for ln in lines:
        ln = ln.strip()
        if ln.startswith("$ "):
            ln = ln[2:].strip()
        if not ln or ln.startswith("#"):
            continue
        if blocks or ln.split()[0] in _FIRST_WORDS:
            cmds.append(ln)
    return cmds


def extract_code(text: str) -> str | None:
    """The first fenced code block of an answer (or None)."""
    m = re.search(r"```[a-zA-Z0-9]*\n(.*?)```", text, flags=re.S)
    return m.group(1) if m else None


# ------------------------------------------------------------------------------------ sandbox


_TEMPLATE: Path | None = None


def _template() -> Path:
    """A `bd init` folder made once per process and copied for every task (bd init is slow);
    removed when the process exits."""
    global _TEMPLATE
    if _TEMPLATE is None or not (_TEMPLATE / ".beads").is_dir():
        from gt_ext.gastown.bd import init_beads

        root = Path(tempfile.mkdtemp(prefix="gt-eval-template-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        init_beads(root / "repo", prefix="sb", env=_env(root / "repo"))
        _TEMPLATE = root / "repo"
    return _TEMPLATE


def _env(repo: Path) -> dict[str, str]:
    from gt_ext.gastown.binaries import find_bd

    home = repo.parent / "home"
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.pathsep.join([str(Path(find_bd()).parent), str(Path(sys.executable).parent),
                                 os.environ.get("PATH", "/usr/bin:/bin")]),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "BEADS_DIR": str(repo / ".beads"),
        "BD_ACTOR": "polecat",
        "GIT_AUTHOR_NAME": "eval polecat", "GIT_AUTHOR_EMAIL": "polecat@eval.invalid",
        "GIT_COMMITTER_NAME": "eval polecat", "GIT_COMMITTER_EMAIL": "polecat@eval.invalid",
        "GIT_TERMINAL_PROMPT": "0", "GIT_EDITOR": "true",
    }
    return env


def _git(repo: Path, env: dict[str, str], *args: str, jail: Sandbox | None = None) -> str:
    """git in `repo`: our own setup runs it directly; on a repo the model has touched, `jail`
    runs it sandboxed (its hooks, config and attributes may now be the model's)."""
    if jail is not None:
        res_j = jail.run(["sh", "-c", 'exec git "$@" 2>/dev/null', "git", *args], timeout_s=60)
        if res_j.returncode != 0:
            raise GtExtError(f"sandbox check: git {' '.join(args)} failed (exit {res_j.returncode})")
        return res_j.output
    res = subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        raise GtExtError(f"sandbox setup: git {' '.join(args)} failed: {res.stderr.strip()[:200]}")
    return res.stdout


def _jail(repo: Path, env: dict[str, str]) -> Sandbox:
    """The bubblewrap sandbox a task's model-driven commands run in: the task folder (repo, its
    bare origin, HOME) writable, nothing else; no network; only `env`."""
    return Sandbox(SandboxPolicy(workdir=repo, write=[repo.parent], env=env, network="none"))


def jail_unavailable() -> str | None:
    """Why model-written commands cannot be sandboxed here (then sandbox tasks do not run), or None."""
    why = Sandbox(SandboxPolicy(workdir=Path(tempfile.gettempdir()), network="none")).unavailable()
    return f"no sandbox for model-written commands: {why}" if why else None


@dataclass
class SandboxTask:
    """One sandbox task (see module doc); `prepare` builds the sandbox, `grade` runs and checks."""

    id: str
    category: str
    spec: dict[str, Any]
    source: Path
    dir: Path | None = None
    ids: dict[str, str] = field(default_factory=dict)
    head0: str = ""
    _jail: Sandbox | None = None  # set while grade() runs its checks

    @property
    def scenario(self) -> str | None:
        """The scenario family of this task (`scenario` key), for the held-out split."""
        sc = self.spec.get("scenario")
        return str(sc) if sc else None

    @property
    def answer(self) -> str:
        """`commands` or `file:PATH`."""
        return str(self.spec.get("answer", "commands"))

    def _prompt_text(self) -> str:
        ids = self.ids or {b["key"]: f"<{b['key']}>" for b in self.spec.get("setup", {}).get("beads", [])}
        body = Template(self.spec["prompt"]).safe_substitute(ids).strip()
        if self.answer.startswith("file:"):
            hint = ANSWER_HINT["file"].format(path=self.answer[5:])
        else:
            hint = ANSWER_HINT["commands"]
        return f"{body}\n{hint}"

    def overlap_text(self) -> str:
        """The task prompt (for the contamination guard)."""
        return self.spec["prompt"]

    def unavailable(self) -> str | None:
        """Why this task cannot run here (no bd or git), or None."""
        from gt_ext.gastown.binaries import find_bd

        if find_bd(required=False) is None:
            return "bd (beads) is not installed"
        if shutil.which("git") is None:
            return "git is not installed"
        return jail_unavailable()

    def prepare(self) -> list[dict[str, str]]:
        """Build a fresh sandbox (copy of a bd-initialised repo + this task's setup); return the prompt."""
        from gt_ext.gastown.bd import Bd

        self.cleanup()
        root = Path(tempfile.mkdtemp(prefix=f"gt-eval-{re.sub(r'[^a-z0-9-]', '', self.id.lower())[:30]}-"))
        repo = root / "repo"
        shutil.copytree(_template(), repo, symlinks=True)
        self.dir = repo
        env = _env(repo)
        setup = self.spec.get("setup", {})
        bd = Bd(repo / ".beads", env=env)
        self.ids = {}
        for b in setup.get("beads", []):
            issue = bd.create(b["title"], description=b.get("description", ""), issue_type=b.get("type", "task"),
                              priority=int(b.get("priority", 2)), labels=b.get("labels"), assignee=b.get("assignee"))
            self.ids[b["key"]] = issue.id
        for b in setup.get("beads", []):
            if b.get("status") == "closed":
                bd.close(self.ids[b["key"]], reason=b.get("close_reason", "done"))
            elif b.get("status") and b["status"] != "open":
                bd.update(self.ids[b["key"]], status=b["status"])
            for blocked in ([b["blocks"]] if isinstance(b.get("blocks"), str) else b.get("blocks") or []):
                bd.run("dep", "add", self.ids[blocked], self.ids[b["key"]])
            if b.get("parent"):
                bd.run("dep", "add", self.ids[b["key"]], self.ids[b["parent"]], "--type", "parent-child")
        for rel, content in (setup.get("files") or {}).items():
            p = repo / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(content)
        _git(repo, env, "add", "-A")
        _git(repo, env, "commit", "-q", "--allow-empty", "-m", setup.get("commit", "task setup"))
        if setup.get("remote"):
            # A bare repo beside the sandbox stands in for origin, so pushes really happen.
            origin = root / "origin.git"
            _git(root, env, "init", "-q", "--bare", str(origin))
            _git(repo, env, "remote", "add", "origin", str(origin))
            _git(repo, env, "push", "-q", "origin", "HEAD")
        if setup.get("branch"):
            _git(repo, env, "checkout", "-q", "-b", setup["branch"])
        for n, msg in enumerate(setup.get("commits", [])):  # extra commits on the current branch
            (repo / "work").mkdir(exist_ok=True)
            (repo / "work" / f"step-{n + 1}.txt").write_text(msg + "\n")
            _git(repo, env, "add", "-A")
            _git(repo, env, "commit", "-q", "-m", msg)
        if setup.get("pre_commit"):
            hook = repo / ".git" / "hooks" / "pre-commit"
            hook.write_text(f"#!/bin/sh\ncd \"$(git rev-parse --show-toplevel)\" && {setup['pre_commit']}\n")
            hook.chmod(0o755)
        for rel, content in (setup.get("dirty") or {}).items():
            p = repo / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(content)
        self.head0 = _git(repo, env, "rev-parse", "HEAD").strip()
        return [{"role": "user", "content": self._prompt_text()}]

    def grade(self, output: str, meta: dict[str, Any] | None = None) -> Sample:
        """Run the answer under the guard, then the hidden checks."""
        if self.dir is None:
            raise GtExtError(f"sandbox task {self.id}: grade() before prepare()")
        env = _env(self.dir)
        why = jail_unavailable()
        if why:
            raise GtExtError(f"sandbox task {self.id}: {why}")
        jail = _jail(self.dir, env)
        violations: list[str] = []
        ran: list[dict[str, Any]] = []
        if self.answer.startswith("file:"):
            code = extract_code(output)
            if code is None:
                return Sample(False, 0.0, output, "no code block in the answer")
            target = (self.dir / self.answer[5:]).resolve()
            if not target.is_relative_to(self.dir.resolve()):
                raise GtExtError(f"sandbox task {self.id}: answer path escapes the sandbox")
            if {".git", ".beads"} & set(target.relative_to(self.dir.resolve()).parts):
                raise GtExtError(f"sandbox task {self.id}: answer path {self.answer[5:]} is inside .git or .beads")
            target.write_text(code)
        else:
            cmds = extract_commands(output)
            if not cmds:
                return Sample(False, 0.0, output, "no commands in the answer")
            for cmd in cmds[:MAX_COMMANDS]:
                if _SHELL_OPS.search(cmd):
                    violations.append(f"{cmd[:60]!r}: shell operators are not allowed")
                    continue
                try:
                    argv = shlex.split(cmd)
                except ValueError:
                    violations.append(f"{cmd[:60]!r}: unparsable")
                    continue
                v = guard(argv)
                if not v.allowed:
                    violations.append(f"{cmd[:60]!r}: {v.reason}")
                    continue
                res = jail.run(argv, timeout_s=COMMAND_TIMEOUT)
                ran.append({"cmd": cmd, "rc": res.returncode} if not res.timed_out
                           else {"cmd": cmd, "rc": None, "error": "TimeoutExpired"})
        self._jail = jail
        try:
            results = [self._check(c, env, ran) for c in self.spec.get("checks", [])]
        finally:
            self._jail = None
        failed = [why for ok, why in results if not ok]
        if violations and not self.spec.get("allow_violations"):
            failed.insert(0, "guard refused: " + "; ".join(violations))
        n = len(results) + 1
        score = (sum(ok for ok, _ in results) + (0 if violations else 1)) / n
        return Sample(not failed, score, output, "; ".join(failed) if failed else "all checks passed")

    # -- checks -------------------------------------------------------------------------------
    def _issues(self, env: dict[str, str]) -> list[dict[str, Any]]:
        from gt_ext.gastown.bd import Bd

        return [i.model_dump() for i in Bd(self.dir / ".beads", env=env).list(all=True)]

    def _show(self, env: dict[str, str], issue_id: str) -> dict[str, Any]:
        from gt_ext.gastown.bd import Bd

        return Bd(self.dir / ".beads", env=env).show(issue_id).model_dump()

    def _check(self, c: dict[str, Any], env: dict[str, str], ran: list[dict[str, Any]]) -> tuple[bool, str]:
        try:
            return self._check_inner(c, env, ran)
        except GtExtError as e:
            return False, f"check {c}: {e}"

    def _check_inner(self, c: dict[str, Any], env: dict[str, str], ran: list[dict[str, Any]]) -> tuple[bool, str]:
        assert self.dir is not None
        # ${key} in check strings means the bead's real id, as in prompts.
        c = {k: Template(v).safe_substitute(self.ids) if isinstance(v, str) else v for k, v in c.items()}
        if "bead" in c:
            issue = self._show(env, self.ids[c["bead"]])
            for fld in ("status", "priority", "assignee", "issue_type"):
                if fld in c and issue.get(fld) != c[fld]:
                    return False, f"bead {c['bead']}: {fld} is {issue.get(fld)!r}, want {c[fld]!r}"
            # bd records "Closed" when no --reason is given: that is not a reason.
            if c.get("close_reason") and (issue.get("close_reason") or "").strip().lower() in ("", "closed"):
                return False, f"bead {c['bead']}: closed without a reason"
            if "notes_contains" in c and c["notes_contains"].lower() not in (issue.get("notes") or "").lower():
                return False, f"bead {c['bead']}: notes lack {c['notes_contains']!r}"
            return True, ""
        if "new_bead" in c:
            want = c["new_bead"]
            known = set(self.ids.values())
            for i in self._issues(env):
                if i["id"] in known:
                    continue
                if want.get("title_contains", "").lower() not in i.get("title", "").lower():
                    continue
                if "type" in want and i.get("issue_type") != want["type"]:
                    continue
                if "priority" in want and i.get("priority") != want["priority"]:
                    continue
                return True, ""
            return False, f"no new bead like {want}"
        if "bead_count" in c:
            want = c["bead_count"]
            items = [i for i in self._issues(env) if "status" not in want or i.get("status") == want["status"]]
            n = len(items)
            if n < want.get("min", 0) or n > want.get("max", 10**9):
                return False, f"{n} bead(s){' ' + want['status'] if 'status' in want else ''}, want {want}"
            return True, ""
        if "dep" in c:
            blocked, blocker = self.ids[c["dep"]["blocked"]], self.ids[c["dep"]["blocker"]]
            deps = self._show(env, blocked).get("dependencies") or []
            ids = {d.get("depends_on_id") or d.get("id") for d in deps if isinstance(d, dict)}
            return (blocker in ids), f"{c['dep']['blocked']} does not depend on {c['dep']['blocker']}"
        if "git_branch_exists" in c:
            out = _git(self.dir, env, "branch", "--list", c["git_branch_exists"], jail=self._jail)
            return bool(out.strip()), f"no branch {c['git_branch_exists']}"
        if "git_current_branch" in c:
            cur = _git(self.dir, env, "rev-parse", "--abbrev-ref", "HEAD", jail=self._jail).strip()
            return cur == c["git_current_branch"], f"on branch {cur}, want {c['git_current_branch']}"
        if "git_new_commits" in c:
            n = int(_git(self.dir, env, "rev-list", "--count", f"{self.head0}..HEAD", jail=self._jail).strip() or 0)
            want = c["git_new_commits"]
            return (want.get("min", 1) <= n <= want.get("max", 10**9)), f"{n} new commit(s), want {want}"
        if "git_remote_branch" in c:
            out = _git(self.dir, env, "ls-remote", "--heads", "origin", c["git_remote_branch"], jail=self._jail)
            return bool(out.strip()), f"origin has no branch {c['git_remote_branch']}"
        if "git_log_contains" in c:
            log_text = _git(self.dir, env, "log", "--format=%s%n%b", f"{self.head0}..HEAD", jail=self._jail)
            return c["git_log_contains"].lower() in log_text.lower(), f"no new commit mentions {c['git_log_contains']!r}"
        if "git_clean" in c:
            dirty = _git(self.dir, env, "status", "--porcelain", jail=self._jail).strip()
            return (not dirty) == bool(c["git_clean"]), f"worktree {'dirty' if dirty else 'clean'}"
        if "git_head_unchanged" in c:
            head = _git(self.dir, env, "rev-parse", "HEAD", jail=self._jail).strip()
            return head == self.head0, "HEAD moved"
        if "file_contains" in c:
            p = self.dir / c["file_contains"]["path"]
            ok = p.is_file() and c["file_contains"]["text"] in p.read_text(errors="replace")
            return ok, f"{c['file_contains']['path']} lacks {c['file_contains']['text']!r}"
        if "run" in c:
            argv = shlex.split(c["run"])
            if argv[0] in ("python", "python3"):
                argv[0] = sys.executable
            if self._jail is None:
                raise GtExtError(f"sandbox task {self.id}: check {c['run']!r} outside grade()")
            res = self._jail.run(argv, timeout_s=COMMAND_TIMEOUT)  # runs the model's code
            if c.get("expect_fail"):
                return res.returncode != 0, f"{c['run']!r} succeeded, want a failure"
            return res.returncode == 0, f"{c['run']!r} exited {res.returncode}"
        if "command_used" in c:
            pat = re.compile(c["command_used"])
            return any(pat.search(r["cmd"]) for r in ran), f"no command matching {c['command_used']!r} ran"
        if "command_succeeded" in c:
            pat = re.compile(c["command_succeeded"])
            return any(pat.search(r["cmd"]) and r["rc"] == 0 for r in ran), f"no successful {c['command_succeeded']!r}"
        raise GtExtError(f"{self.source}: task {self.id}: unknown check {sorted(c)}")

    def cleanup(self) -> None:
        """Remove the sandbox folder."""
        if self.dir is not None:
            shutil.rmtree(self.dir.parent, ignore_errors=True)
            self.dir = None


_KNOWN_CHECKS = {"bead", "new_bead", "bead_count", "dep", "git_branch_exists", "git_remote_branch", "git_current_branch", "git_new_commits",
                 "git_log_contains", "git_clean", "git_head_unchanged", "file_contains", "run", "command_used",
                 "command_succeeded"}


def load_tasks(path: str | Path) -> list[SandboxTask]:
    """Read `sandbox.yaml`: validate each task's shape (one-line errors naming the task)."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or []
    except yaml.YAMLError as e:
        raise GtExtError(f"{p}: invalid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(data, list):
        raise GtExtError(f"{p}: must be a list of tasks")
    tasks = []
    for i, spec in enumerate(data):
        where = f"{p}: task {i + 1}"
        if not isinstance(spec, dict) or not spec.get("id") or not spec.get("prompt"):
            raise GtExtError(f"{where}: needs id and prompt")
        where = f"{p}: task {spec['id']}"
        checks = spec.get("checks")
        if not isinstance(checks, list) or not checks:
            raise GtExtError(f"{where}: needs a non-empty list of checks")
        keys = {b.get("key") for b in (spec.get("setup") or {}).get("beads", []) if isinstance(b, dict)}
        for c in checks:
            if not isinstance(c, dict) or not (set(c) & _KNOWN_CHECKS):
                raise GtExtError(f"{where}: unknown check {c!r}")
            for ref in (c.get("bead"), *(c.get("dep") or {}).values()):
                if ref is not None and ref not in keys:
                    raise GtExtError(f"{where}: check refers to unknown bead key {ref!r}")
        ans = str(spec.get("answer", "commands"))
        if ans != "commands" and not (ans.startswith("file:") and len(ans) > 5 and ".." not in ans):
            raise GtExtError(f"{where}: answer must be `commands` or `file:PATH`")
        tasks.append(SandboxTask(id=str(spec["id"]), category=str(spec.get("category", "general")), spec=spec, source=p))
    return tasks
