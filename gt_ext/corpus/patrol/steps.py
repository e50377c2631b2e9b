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

# More training wordings of each action's rule (`rule` is the first): a training prompt lists one of
# them, so the model meets each action under more than one sentence and has to match the list by
# meaning. Written apart from `Action.reworded`, which stays the held-out family's alone (a test
# checks none of these equals it).
TRAIN_RULES: dict[str, tuple[str, ...]] = {
    "witness/survey-workers/restart": ("the agent (or its whole session) died while the bead is open and the worktree "
                                       "is present, or it has been silent at least 30 minutes: restart it",),
    "witness/survey-workers/nudge": ("a live agent holds hooked work but has been silent 10 to 30 minutes",),
    "witness/survey-workers/reset-bead": ("the bead is in_progress yet the session and the polecat directory are both "
                                          "missing: put the bead back to open and inform the deacon",),
    "witness/survey-workers/none": ("no polecat needs help: each is active, finished or waiting for its MR",),
    "witness/process-cleanups/close-wisp": ("tree clean, stash empty and every commit pushed: close the wisp",),
    "witness/process-cleanups/push": ("unpushed commits on a clean tree: push before closing",),
    "witness/process-cleanups/commit": ("changes not committed, or stashed work: pop the stash if any, commit, push",),
    "witness/process-cleanups/escalate": ("its upstream branch no longer exists: mail RECOVERY_NEEDED to the deacon",),
    "witness/inbox-check/archive": ("a lifecycle notice (POLECAT_STARTED, POLECAT_DONE, MERGED, HANDOFF): record "
                                    "and archive it",),
    "witness/inbox-check/handle": ("a HELP about a hung, zombie, timed-out or stalled session, or one to respawn: "
                                   "the witness deals with it",),
    "witness/inbox-check/escalate": ("a HELP the witness cannot fix: security or data loss to the overseer "
                                     "(critical), crash, panic, oom or database errors to the deacon (high), "
                                     "blocked or merge conflict to the mayor (high), an approach or design question "
                                     "to the deacon (medium)",),
    "refinery/process-branch/run-tests": ("branch present on origin and rebased without conflict: run the tests next",),
    "refinery/process-branch/conflict-task": ("the rebase hit conflicts: abort it and file a conflict task; keep both "
                                              "branch and MR",),
    "refinery/process-branch/close-mr": ("origin has lost the branch: close the MR bead (this is not a failure)",),
    "refinery/handle-failures/merge": ("tests green, or the target fails the same way with a bug already open: merge",),
    "refinery/handle-failures/fix-needed": ("the branch fails where the target passes: send FIX_NEEDED to the "
                                            "polecat, keep the branch and MR",),
    "refinery/handle-failures/file-bug": ("the target fails too (pre-existing or flaky) and no bug is open: file a "
                                          "bug, then merge",),
    "refinery/merge-push/notify-merged": ("origin's SHA equals the local one: MERGED to the witness, then post-merge",),
    "refinery/merge-push/retry-push": ("push rejected or SHAs differ: no notification and nothing closed; find the "
                                       "cause and push again",),
    "deacon/zombie-scan/file-warrant": ("silent more than 10 minutes with no session and no hooked or in_progress "
                                        "work: a death warrant for Boot",),
    "deacon/zombie-scan/none": ("a live session, work on its hook, or output within 10 minutes: leave it",),
    "deacon/plugin-run/dispatch": ("never run, or the last run is older than the cooldown: sling it to a dog",),
    "deacon/plugin-run/skip": ("the last run is within the cooldown: wait",),
    "deacon/orphan-check/dispatch-orphan-scan": ("some in_progress bead's assignee has no live session: sling the "
                                                 "orphan scan to a dog",),
    "deacon/orphan-check/none": ("each in_progress bead's assignee still has a live session",),
    "dog/triage-orphans/reset": ("dead session, no branch and no commits: reopen the bead",),
    "dog/triage-orphans/recover": ("dead session but commits on its branch: keep the branch, reopen with a note",),
    "dog/triage-orphans/escalate": ("notes claim a push but the branch is missing: possible data loss, mail the mayor",),
    "dog/triage-orphans/skip": ("the assignee's session still runs: not an orphan",),
    "dog/act/request-restart": ("a dead session whose hook still holds work: send RESTART_POLECAT to the witness",),
    "dog/act/kill-restart": ("session up, agent process gone, no build in the pane: kill the zombie session and "
                             "request a restart",),
    "dog/act/escalate": ("3 or more agents down in one scan: mass death, CRITICAL escalation, restart nobody",),
    "dog/act/skip": ("crew, mayor, witness or refinery (out of scope), a closed bead, or a build or test running in "
                     "the pane",),
    "dog/cleanup/drop": ("orphan databases found, at most max_orphans_for_sql: DROP them over SQL",),
    "dog/cleanup/escalate": ("orphans exceed max_orphans_for_sql: escalate HIGH and drop nothing",),
    "dog/cleanup/none": ("no database name matches an orphan pattern",),
}


def training_rules(st: Step, a: Action) -> tuple[str, ...]:
    """The wordings a training prompt may give `a`'s rule at step `st` (its `rule` first)."""
    return (a.rule, *TRAIN_RULES.get(f"{st.key}/{a.id}", ()))


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
