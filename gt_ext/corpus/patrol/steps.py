"""The patrol steps the sample town decides at, read from Gas Town's own patrol formulas.

Facts come from gt v1.0.1's `mol-witness-patrol`, `mol-refinery-patrol`, `mol-deacon-patrol`,
`mol-orphan-scan`, `mol-dog-stale-db` and the `stuck-agent-dog` plugin (step ids, what each step
may do, and the rules it gives); the wording here is this project's own. Each `Action` is one thing
the step's instructions allow; `names` are the words a training prompt may list it as, `heldout`
words appear only in the held-out "reworded" family, so a model has to read the list it is given.

A decision answers one JSON object with `fields` (always `action` and `reason`; `target`, `urgency`
and `preserve` where the step's decision has them).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Action:
    """One action a step allows: its id, the rule that calls for it, and the words it is listed as."""

    id: str
    rule: str  # when the formula calls for it (training wording)
    reworded: str  # the same rule in other words (held-out reworded family only)
    names: tuple[str, ...]  # names a training prompt lists it as (names[0] is the usual one)
    heldout: str  # the name used only by the held-out reworded family
    noop: bool = False  # the step's "do nothing" action (the always-no-op baseline answers it)


@dataclass(frozen=True)
class Step:
    """One decision step of a patrol formula."""

    role: str
    formula: str
    id: str
    brief: str  # what the step does, in a sentence or two
    actions: tuple[Action, ...]
    fields: tuple[str, ...] = ("target", "reason", "action")
    config: tuple[str, ...] = field(default=())  # formula variables shown as "Config: k = v"

    @property
    def key(self) -> str:
        return f"{self.role}/{self.id}"

    def action(self, aid: str) -> Action:
        for a in self.actions:
            if a.id == aid:
                return a
        raise KeyError(f"{self.key}: no action {aid!r}")

    @property
    def noop(self) -> Action | None:
        """The step's do-nothing action, if its instructions have one."""
        return next((a for a in self.actions if a.noop), None)


A = Action

STEPS: tuple[Step, ...] = (
    # ------------------------------------------------------------------ witness: mol-witness-patrol
    Step("witness", "mol-witness-patrol", "survey-workers",
         "Survey the rig's polecats for zombies, stalls and completions. Restart-first: never nuke a "
         "polecat; a done polecat or one with a pending MR is left alone.",
         (A("restart", "its session is gone or its agent exited while its bead is still open and its "
                       "worktree exists, or it printed nothing for 30+ minutes",
            "bead still open, worktree on disk, but no live agent in its session (or silent half an hour or more)",
            ("restart", "restart-session", "respawn"), "session-restart"),
          A("nudge", "its agent is alive with work on its hook but printed nothing for 10-30 minutes",
            "agent up and hooked, yet quiet for between ten and thirty minutes",
            ("nudge", "nudge-polecat", "ping"), "poke"),
          A("reset-bead", "its bead is in_progress but both its session and its polecat directory are gone "
                          "(orphan): reopen the bead and tell the deacon",
            "orphaned bead: no session and no polecat folder, so the bead goes back to open",
            ("reset-bead", "reopen-bead", "recover-orphan"), "release-bead"),
          A("none", "every polecat is working (recent output), done (bead closed) or waiting on a pending MR",
            "nothing to do: busy, finished, or an MR is still in the queue",
            ("none", "leave-alone", "no-op"), "skip", noop=True))),
    Step("witness", "mol-witness-patrol", "process-cleanups",
         "Resolve an open cleanup wisp: look at the polecat's git state before anything is removed.",
         (A("close-wisp", "nothing to save: clean tree, no stash, nothing unpushed",
            "worktree clean, stash empty, upstream up to date",
            ("close-wisp", "close", "resolve-wisp"), "done"),
          A("push", "commits not on the upstream yet and a clean tree: push them first",
            "local commits ahead of origin with nothing uncommitted",
            ("push", "push-commits", "push-first"), "upload"),
          A("commit", "uncommitted changes or a stash: commit (or pop and commit) and push",
            "modified files or stashed work still only on disk",
            ("commit", "commit-and-push", "save-work"), "checkin"),
          A("escalate", "the upstream branch is gone: cannot resolve here, send RECOVERY_NEEDED to the deacon",
            "its remote branch has vanished, so the work needs the deacon",
            ("escalate", "recovery-needed", "ask-deacon"), "raise")),
         fields=("target", "reason", "preserve", "action")),
    Step("witness", "mol-witness-patrol", "inbox-check",
         "Handle one message in the witness inbox.",
         (A("archive", "protocol mail (POLECAT_STARTED, POLECAT_DONE, MERGED, HANDOFF): note it and archive",
            "routine lifecycle mail: read and file away",
            ("archive", "ack", "file-away"), "shelve", noop=True),
          A("handle", "HELP about a session: hung, respawn, zombie, timeout, no progress: the witness fixes it",
            "a help request about a session problem the witness can fix itself",
            ("handle", "resolve", "fix-here"), "take-care"),
          A("escalate", "any other HELP: security or data loss -> overseer critical; crash, panic, oom, "
                        "database error -> deacon high; blocked, merge conflict -> mayor high; which approach, "
                        "design choice -> deacon medium",
            "help the witness cannot give: send it up (overseer critical for security or data loss, deacon "
            "high for crashes, mayor high when blocked, deacon medium for a design question)",
            ("escalate", "forward", "route-up"), "hand-up")),
         fields=("target", "urgency", "reason", "action")),
    # ------------------------------------------------------------------ refinery: mol-refinery-patrol
    Step("refinery", "mol-refinery-patrol", "process-branch",
         "Take the next MR: check its branch exists, then rebase it on the target.",
         (A("run-tests", "the branch exists and the rebase succeeded: go on to the tests",
            "rebase applied cleanly on a branch that is still there",
            ("run-tests", "test", "proceed"), "verify"),
          A("conflict-task", "the rebase conflicts: abort, file a conflict task, keep branch and MR",
            "conflicting rebase: abort, open a task for the polecat, delete nothing",
            ("conflict-task", "file-conflict", "abort-rebase"), "needs-resolution"),
          A("close-mr", "the branch no longer exists on origin: close the MR bead, not a failure",
            "origin has no such branch any more, so the MR is closed",
            ("close-mr", "drop-mr", "close"), "retire-mr")),
         fields=("target", "reason", "preserve", "action")),
    Step("refinery", "mol-refinery-patrol", "handle-failures",
         "Decide on the rebased branch's test results; never fix code yourself.",
         (A("merge", "all passed, or it fails on the target too and an open bug covers it",
            "green run, or a known target failure that already has an open bug",
            ("merge", "proceed", "merge-push"), "land"),
          A("fix-needed", "fails on the branch, passes on the target: FIX_NEEDED to the polecat, keep branch and MR",
            "the branch broke it (target is green): the polecat must fix it",
            ("fix-needed", "reject", "send-back"), "return-to-author"),
          A("file-bug", "fails on the target too (pre-existing or flaky), no open bug: file one, then merge",
            "the target fails the same way and no bug is open for it yet",
            ("file-bug", "report-bug", "bug-then-merge"), "log-defect")),
         fields=("target", "reason", "preserve", "action")),
    Step("refinery", "mol-refinery-patrol", "merge-push",
         "After pushing the merge, verify the push before any notification.",
         (A("notify-merged", "local and origin SHAs match: send MERGED to the witness and run post-merge",
            "origin shows the same commit as local, so announce the merge",
            ("notify-merged", "announce", "send-merged"), "confirm"),
          A("retry-push", "the SHAs differ or the push was rejected: do not notify or close anything; "
                          "debug and push again",
            "origin does not have the merge: hold every notification and push again",
            ("retry-push", "repush", "hold"), "try-again", noop=True)),
         fields=("reason", "action")),
    # ------------------------------------------------------------------ deacon: mol-deacon-patrol
    Step("deacon", "mol-deacon-patrol", "zombie-scan",
         "Detect polecats the witness failed to clean up. Detection only: the deacon never kills.",
         (A("file-warrant", "no session, no hooked or in_progress work, and silent over 10 minutes: file a "
                            "death warrant for Boot",
            "no session, nothing hooked, quiet more than ten minutes: hand it to Boot",
            ("file-warrant", "warrant", "report-zombie"), "flag"),
          A("none", "it has a live session, hooked work, or activity in the last 10 minutes",
            "alive, still holding work, or active within ten minutes",
            ("none", "no-op", "leave-alone"), "skip", noop=True))),
    Step("deacon", "mol-deacon-patrol", "plugin-run",
         "Check one plugin's gate and run it through a dog when the gate is open.",
         (A("dispatch", "the gate is open: the cooldown has passed since the last run, or it never ran",
            "open gate: never ran, or ran longer ago than its cooldown",
            ("dispatch", "run-plugin", "sling-dog"), "fire"),
          A("skip", "the gate is closed: it ran within its cooldown",
            "closed gate: the last run is newer than the cooldown",
            ("skip", "none", "wait"), "hold-off", noop=True)),
         fields=("target", "reason", "action")),
    Step("deacon", "mol-deacon-patrol", "orphan-check",
         "Detect abandoned work and hand it to a dog; never fix orphans inline.",
         (A("dispatch-orphan-scan", "an in_progress bead's assignee has no live session",
            "work marked in_progress whose owner's session is gone",
            ("dispatch-orphan-scan", "sling-orphan-scan", "send-dog"), "dog-it"),
          A("none", "every in_progress bead has a live session",
            "each in-progress bead's owner is still running",
            ("none", "no-op", "skip"), "pass", noop=True))),
    # ------------------------------------------------------------------ dog: formulas and plugins
    Step("dog", "mol-orphan-scan", "triage-orphans",
         "Classify one in_progress issue found by the orphan scan and pick its recovery.",
         (A("reset", "the assignee's session is dead and no work was done (no branch, no commits): reopen it",
            "dead owner and nothing on a branch: back to open",
            ("reset", "reopen", "reset-open"), "return"),
          A("recover", "the session is dead but its branch has commits: keep the branch, reopen with a note",
            "dead owner with commits on its branch: salvage and keep the branch",
            ("recover", "salvage", "keep-branch"), "rescue"),
          A("escalate", "the bead says work was pushed but its branch is gone: possible data loss, mail the mayor",
            "work reported pushed, branch missing: tell the mayor",
            ("escalate", "report-loss", "mail-mayor"), "alarm"),
          A("skip", "the assignee's session is alive: not an orphan",
            "owner still running: not orphaned",
            ("skip", "none", "not-orphan"), "ignore", noop=True)),
         fields=("target", "reason", "preserve", "action")),
    Step("dog", "stuck-agent-dog", "act",
         "Plugin stuck-agent-dog: decide for the agents the scan listed. Only polecats and the deacon are "
         "in scope, never crew, mayor, witness or refinery.",
         (A("request-restart", "the session is dead with work on its hook: mail the witness RESTART_POLECAT",
            "session gone while its hook still holds a bead: ask the witness to restart it",
            ("request-restart", "restart", "ask-restart"), "revive"),
          A("kill-restart", "the session is alive but its agent process is gone and the pane shows no "
                            "running build: kill the zombie session, then request a restart",
            "a shell with no agent and no build running: clear the session and ask for a restart",
            ("kill-restart", "clear-zombie", "kill-zombie"), "clear-and-revive"),
          A("escalate", "three or more agents are down in this scan: mass death, escalate CRITICAL, restart none",
            "three or more down at once: systemic, escalate instead of restarting",
            ("escalate", "mass-death", "alert"), "sound-alarm"),
          A("skip", "out of scope (crew, mayor, witness, refinery), its bead is closed, or the pane shows a "
                    "build or test still running",
            "not ours to touch, already finished, or busy with a long build",
            ("skip", "none", "leave"), "let-be", noop=True)),
         fields=("target", "urgency", "reason", "action")),
    Step("dog", "mol-dog-stale-db", "cleanup",
         "Clean orphan test databases (testdb_*, beads_t*, beads_pt*, beads_vr*, doctest_*, doctortest_*).",
         (A("drop", "some orphans, no more than max_orphans_for_sql: DROP them over SQL",
            "a few orphan databases, within the SQL limit: drop them",
            ("drop", "drop-orphans", "sql-cleanup"), "purge"),
          A("escalate", "more orphans than max_orphans_for_sql: escalate HIGH, do not drop",
            "over the SQL limit: too many to drop, escalate",
            ("escalate", "too-many", "raise"), "report-up"),
          A("none", "no database matches an orphan pattern",
            "no orphan names in the list",
            ("none", "skip", "no-op"), "nothing", noop=True)),
         fields=("reason", "action")),
)

ROLES = ("witness", "refinery", "deacon", "dog")


def steps_for(role: str) -> list[Step]:
    """The decision steps of one patrol role, in formula order."""
    return [s for s in STEPS if s.role == role]


def step(key: str) -> Step:
    """A step by `role/id`."""
    for s in STEPS:
        if s.key == key:
            return s
    raise KeyError(key)
