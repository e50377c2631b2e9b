"""Git branches, worktrees and clones of a rig's repository, the way gt lays them out.

gt v1.0.1 keeps a rig's code in a shared bare repository `<rig>/.repo.git`: polecats get worktrees
of it, and the refinery's worktree `<rig>/refinery/rig` has the default branch checked out and
merges work into it. A town built without gt has only the mayor's clone `<rig>/mayor/rig`, which
is used the same way. A sandboxed agent gets a clone (`add_clone`) instead of a worktree, since a
worktree's commits write into the shared repository. Branch merges never force:
`merge_conflicts` asks git (`merge-tree --write-tree`, which touches nothing) first, and `merge`
refuses a dirty target worktree.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from gt_ext.errors import GtExtError
from gt_ext.gastown.branches import check_branch_name
from gt_ext.gastown.town import Town

log = logging.getLogger(__name__)


@dataclass
class GitMergeResult:
    """Merged (with the new commit) or refused (conflicting paths, or why)."""

    branch: str
    merged: bool
    commit: str | None = None
    up_to_date: bool = False
    conflicts: list[str] = field(default_factory=list)
    message: str = ""

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return dict(self.__dict__)


class RigRepo:
    """A rig's git repository (bare `.repo.git` or the mayor's clone)."""

    def __init__(self, path: Path, env: dict[str, str] | None = None, timeout: float = 120.0):
        self.path = Path(path)
        self.env = dict(os.environ if env is None else env)
        for k in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
            self.env.pop(k, None)
        self.timeout = timeout

    @classmethod
    def for_rig(cls, town: Town, rig: str, env: dict[str, str] | None = None) -> RigRepo:
        """`<rig>/.repo.git` when gt made one, else `<rig>/mayor/rig`."""
        r = town.rig(rig)
        for cand in (r.root / ".repo.git", r.root / "mayor" / "rig"):
            if (cand / "HEAD").is_file() or (cand / ".git").exists():
                return cls(cand, env)
        raise GtExtError(f"rig {rig}: no git repository (looked for {r.root / '.repo.git'} and {r.root / 'mayor/rig'})")

    def git(self, *args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run git in the repository (or in `cwd`, a worktree of it)."""
        try:
            res = subprocess.run(["git", *args], cwd=cwd or self.path, env=self.env, capture_output=True, text=True,
                                 timeout=self.timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise GtExtError(f"git {args[0]} in {cwd or self.path}: timed out") from None
        if check and res.returncode != 0:
            tail = (res.stderr or res.stdout).strip().splitlines()
            raise GtExtError(f"git {' '.join(args[:2])} in {cwd or self.path}: {tail[-1] if tail else 'failed'}")
        return res

    def out(self, *args: str, cwd: Path | None = None) -> str:
        """stdout of a git command that must succeed, stripped."""
        return self.git(*args, cwd=cwd).stdout.strip()

    # -- refs -----------------------------------------------------------------------------------
    def default_branch(self) -> str:
        """The branch HEAD names in the repository (`main` for gt's rigs)."""
        ref = self.git("symbolic-ref", "--short", "HEAD", check=False).stdout.strip()
        return ref or "main"

    def head(self, ref: str) -> str | None:
        """Commit of `ref`, or None when it does not exist."""
        res = self.git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False)
        return res.stdout.strip() or None

    def has_branch(self, name: str) -> bool:
        """True when refs/heads/`name` exists."""
        return self.git("show-ref", "--verify", "--quiet", f"refs/heads/{name}", check=False).returncode == 0

    def commits(self, base: str, branch: str) -> list[dict[str, str]]:
        """Commits on `branch` not on `base`, oldest first: sha, subject, author."""
        out = self.out("log", "--reverse", "--format=%H%x1f%s%x1f%an", f"{base}..{branch}")
        return [dict(zip(("sha", "subject", "author"), ln.split("\x1f"), strict=False)) for ln in out.splitlines() if ln]

    # -- worktrees ------------------------------------------------------------------------------
    def worktrees(self) -> dict[Path, str | None]:
        """{worktree path: checked-out branch (None when detached)}."""
        out: dict[Path, str | None] = {}
        cur: Path | None = None
        for ln in self.out("worktree", "list", "--porcelain").splitlines():
            if ln.startswith("worktree "):
                cur = Path(ln[len("worktree "):])
                out[cur] = None
            elif ln.startswith("branch ") and cur is not None:
                out[cur] = ln[len("branch "):].removeprefix("refs/heads/")
        return out

    def worktree_for(self, branch: str) -> Path | None:
        """The worktree that has `branch` checked out (None when none has)."""
        return next((path for path, b in self.worktrees().items() if b == branch), None)

    def add_worktree(self, path: Path, branch: str, start: str) -> str:
        """A new branch `branch` at `start`, checked out in a new worktree at `path`; its commit."""
        check_branch_name(branch.replace("/", "-"))
        if self.has_branch(branch):
            raise GtExtError(f"{self.path}: branch {branch} already exists")
        if path.exists():
            raise GtExtError(f"worktree folder {path} already exists")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.git("worktree", "add", "-q", "-b", branch, str(path), start)
        return self.out("rev-parse", "HEAD", cwd=path)

    def add_clone(self, path: Path, branch: str, start: str) -> str:
        """A new branch `branch` at `start` in this repository, and a clone of it at `path` with
        that branch checked out (objects shared, so it is quick and small); its commit.

        Unlike a worktree, whose commits write into this repository, a clone keeps everything it
        does inside `path` until `fetch_from_clone` brings its branch back: an agent whose sandbox
        may write only its work dir can commit there, and cannot touch any other branch."""
        check_branch_name(branch.replace("/", "-"))
        if self.has_branch(branch):
            raise GtExtError(f"{self.path}: branch {branch} already exists")
        if path.exists():
            raise GtExtError(f"clone folder {path} already exists")
        self.git("branch", branch, start)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.git("clone", "-q", "--shared", "--no-checkout", "--branch", branch, str(self.path), str(path))
            self.git("checkout", "-q", branch, cwd=path)
        except GtExtError:
            shutil.rmtree(path, ignore_errors=True)
            self.git("branch", "-D", branch, check=False)
            raise
        return self.out("rev-parse", "HEAD", cwd=path)

    def fetch_from_clone(self, path: Path, branch: str) -> bool:
        """Bring `branch` of the clone at `path` back into this repository (False if the clone no
        longer has that branch: this repository's branch stays where it was)."""
        res = self.git("fetch", "-q", str(path), f"+refs/heads/{branch}:refs/heads/{branch}", check=False)
        return res.returncode == 0

    def remove_worktree(self, path: Path) -> None:
        """Remove a worktree or a clone (and its folder) if it is there."""
        if path.exists():
            if (path / ".git").is_file():  # a worktree: its .git names this repository
                self.git("worktree", "remove", "--force", str(path), check=False)
            shutil.rmtree(path, ignore_errors=True)
        self.git("worktree", "prune", check=False)

    def delete_branch(self, name: str) -> bool:
        """Delete refs/heads/`name` (merged or not); False when there was none."""
        if not self.has_branch(name):
            return False
        self.git("branch", "-D", name)
        return True

    # -- inspecting a worktree --------------------------------------------------------------------
    def current_branch(self, worktree: Path) -> str | None:
        """The branch checked out in `worktree` (None when HEAD is detached)."""
        res = self.git("symbolic-ref", "--short", "-q", "HEAD", cwd=worktree, check=False)
        return res.stdout.strip() or None

    def head_reflog(self, worktree: Path) -> list[str]:
        """Every commit HEAD of `worktree` has pointed at (its own reflog, newest first)."""
        res = self.git("reflog", "show", "--format=%H", "HEAD", cwd=worktree, check=False)
        return [ln for ln in res.stdout.split() if ln]

    def contains(self, branch: str, commit: str) -> bool:
        """True when `commit` is reachable from `branch`."""
        return self.git("merge-base", "--is-ancestor", commit, branch, check=False).returncode == 0

    def dirty(self, worktree: Path, untracked: bool = True) -> list[str]:
        """Uncommitted paths of a worktree (`git status --porcelain`); `untracked=False` counts
        changes to tracked files only. gt's `.beads/` redirect in a work dir is never counted."""
        args = ["status", "--porcelain"] + ([] if untracked else ["--untracked-files=no"])
        paths = [ln[3:] for ln in self.out(*args, cwd=worktree).splitlines() if ln.strip()]
        return [p for p in paths if p.rstrip("/") != ".beads"]

    # -- merging --------------------------------------------------------------------------------
    def merge_conflicts(self, branch: str, into: str) -> list[str]:
        """Paths that would conflict if `branch` merged into `into` (empty: clean). Touches nothing."""
        res = self.git("merge-tree", "--write-tree", "--name-only", "--no-messages", into, branch, check=False)
        if res.returncode == 0:
            return []
        if res.returncode == 1:
            return [ln for ln in res.stdout.splitlines()[1:] if ln.strip()]
        raise GtExtError(f"git merge-tree {into} {branch} in {self.path}: {res.stderr.strip()[:200]}")

    def merge(self, branch: str, into: str, message: str) -> GitMergeResult:
        """Merge `branch` into `into` with a merge commit; conflicts are reported, never forced.

        Where a worktree has `into` checked out (gt's refinery), the merge happens there and that
        worktree must be clean; otherwise the merge commit is built from `merge-tree` and the ref
        moves only if it still points where it did (compare-and-swap)."""
        for b in (branch, into):
            if not self.has_branch(b):
                raise GtExtError(f"{self.path}: no branch {b}")
        old = self.head(into)
        assert old is not None
        if self.contains(into, self.head(branch) or ""):
            return GitMergeResult(branch, True, commit=old, up_to_date=True, message="already up to date")
        conflicts = self.merge_conflicts(branch, into)
        if conflicts:
            return GitMergeResult(branch, False, conflicts=conflicts,
                                  message=f"conflicts in {', '.join(conflicts[:10])}")
        wt = self.worktree_for(into)
        if wt is not None:
            dirty = self.dirty(wt, untracked=False)  # git merge itself refuses to overwrite untracked files
            if dirty:
                return GitMergeResult(branch, False, message=f"{wt} (on {into}) has uncommitted changes: "
                                                             f"{', '.join(dirty[:5])}")
            res = self.git("merge", "--no-ff", "--no-edit", "-m", message, branch, cwd=wt, check=False)
            if res.returncode != 0:
                self.git("merge", "--abort", cwd=wt, check=False)
                return GitMergeResult(branch, False, message=f"git merge failed: {(res.stderr or res.stdout).strip()[:200]}")
            return GitMergeResult(branch, True, commit=self.out("rev-parse", "HEAD", cwd=wt), message="merged")
        tree = self.out("merge-tree", "--write-tree", into, branch).splitlines()[0]
        commit = self.out("commit-tree", tree, "-p", old, "-p", self.head(branch) or branch, "-m", message)
        res = self.git("update-ref", "-m", message, f"refs/heads/{into}", commit, old, check=False)
        if res.returncode != 0:
            return GitMergeResult(branch, False, message=f"{into} moved during the merge; nothing changed")
        return GitMergeResult(branch, True, commit=commit, message="merged")

    def reset_branch(self, name: str, expected: str, to: str) -> bool:
        """Move `name` back from `expected` to `to` (undo a merge), only if it is still at `expected`."""
        wt = self.worktree_for(name)
        if wt is not None:
            if self.out("rev-parse", "HEAD", cwd=wt) != expected or self.dirty(wt, untracked=False):
                return False
            return self.git("reset", "-q", "--keep", to, cwd=wt, check=False).returncode == 0
        return self.git("update-ref", f"refs/heads/{name}", to, expected, check=False).returncode == 0
