"""Extra training wordings of the patrol steps' rules and extra names for their actions.

A training prompt lists each allowed action as `- NAME: RULE`. With one fixed wording per rule, a
model can key on memorised tokens instead of reading the rule; these alternatives (same meaning,
other words) make the rule's meaning the way to the right name. Training only: the held-out
suites never use them (tests/corpus/test_patrol_wordings.py keeps them apart from the held-out
wording).
"""

RULES: dict[str, tuple[str, ...]] = {
    "witness/survey-workers/restart": (
        "session missing or agent dead with the bead open and worktree present; or no output in 30+ minutes",
        "When the bead remains open and the worktree is on disk yet the session vanished or the agent quit,"
        " or output stopped 30 or more minutes ago",
        "the session list lacks it or its agent process ended, with an open bead and a worktree still there;"
        " or its pane has been silent for at least 30 minutes",
    ),
    "witness/survey-workers/nudge": (
        "agent running, hooked work, silent 10-30 minutes",
        "When the agent still runs and has hooked work yet has been quiet for 10-30 minutes",
        "the pane shows no new output for 10-30 minutes though the agent lives and work sits on the hook",
    ),
    "witness/survey-workers/reset-bead": (
        "orphan: bead in_progress, session and polecat dir both missing; reopen bead, notify deacon",
        "When the bead is still in_progress while neither the session nor the polecat directory exists,"
        " reopen that bead and inform the deacon",
        "no session in the list and no polecat directory on disk, yet the bead reads in_progress (orphan):"
        " set the bead open again and let the deacon know",
    ),
    "witness/survey-workers/none": (
        "all polecats busy (fresh output), finished (bead closed) or awaiting a pending MR",
        "When each polecat either shows recent output, has a closed bead, or has an MR pending",
        "each polecat's pane has fresh output, its bead is closed, or it sits behind a pending MR",
    ),
    "witness/process-cleanups/close-wisp": (
        "tree clean, stash empty, all commits pushed",
        "When there are no local changes, no stash and no unpushed commits",
        "git status clean, stash list empty, nothing ahead of upstream",
    ),
    "witness/process-cleanups/push": (
        "clean tree, unpushed local commits: push them before anything else",
        "When the tree is clean but some commits are missing from upstream, push those first",
        "git status is clean yet the branch is ahead of its upstream: push the commits first",
    ),
    "witness/process-cleanups/commit": (
        "dirty tree or stash: commit (popping the stash first if any), then push",
        "When there are unsaved edits or a stash entry, commit them (pop a stash first) and push",
        "git status shows edits or the stash holds work: pop if stashed, commit, push",
    ),
    "witness/process-cleanups/escalate": (
        "upstream branch deleted: unresolvable locally, RECOVERY_NEEDED to deacon",
        "When the upstream branch has vanished, this cannot be fixed here: mail the deacon RECOVERY_NEEDED",
        "git reports no upstream branch any more: out of reach here, deacon gets RECOVERY_NEEDED",
    ),
    "witness/inbox-check/archive": (
        "POLECAT_STARTED, POLECAT_DONE, MERGED or HANDOFF message: record and archive",
        "When the mail is protocol traffic (POLECAT_STARTED, POLECAT_DONE, MERGED or HANDOFF), log and archive it",
        "subject is POLECAT_STARTED, POLECAT_DONE, MERGED or HANDOFF (protocol traffic): take note, then archive",
    ),
    "witness/inbox-check/handle": (
        "session HELP (zombie, hung, timeout, respawn or no progress): witness deals with it itself",
        "When HELP reports a session hung, zombie, timed out, needing respawn or stuck without progress,"
        " fix it locally",
        "the HELP mail mentions a session being hung, a zombie, a timeout, a respawn or no progress:"
        " fix it at the witness",
    ),
    "witness/inbox-check/escalate": (
        "HELP of any other kind: data loss or security to overseer (critical); panic, crash, oom or database error"
        " to deacon (high); merge conflict or blocked to mayor (high);"
        " design choice or which approach to deacon (medium)",
        "When HELP is about anything else, route it: overseer at critical for data loss or security,"
        " deacon at high for a crash, panic, oom or database error, mayor at high for blocked or a merge conflict,"
        " deacon at medium for which approach or a design choice",
        "the HELP mail fits none of the session cases: security/data loss -> critical to overseer;"
        " oom/panic/crash/database error -> high to deacon; merge conflict/blocked -> high to mayor;"
        " design choice/which approach -> medium to deacon",
    ),
    "refinery/process-branch/run-tests": (
        "branch present, rebase clean: continue to testing",
        "When the branch is found and rebasing onto the target worked, move on to testing",
        "git finds the branch and the rebase completed cleanly: carry on with testing",
    ),
    "refinery/process-branch/conflict-task": (
        "rebase hit conflicts: abort it, open a conflict task, leave branch and MR in place",
        "When rebasing stops on conflicts, abort, raise a conflict task; the branch and MR are kept",
        "git rebase reports CONFLICT: rebase --abort, create a conflict task, branch and MR stay",
    ),
    "refinery/process-branch/close-mr": (
        "branch gone from origin: close MR bead; this is no failure",
        "When origin lacks the branch now, close the bead of the MR; do not count it as failed",
        "git ls-remote shows no such branch on origin: shut the MR bead, which is not an error",
    ),
    "refinery/handle-failures/merge": (
        "tests green, or the target shows that identical failure with an open bug already tracking it",
        "When every test passes, or the target fails too and some open bug already covers that",
        "the test run is all green, or the same failure shows on target and a bug for it is open",
    ),
    "refinery/handle-failures/fix-needed": (
        "branch red, target green: send polecat FIX_NEEDED; branch and MR stay",
        "When tests break only on the branch while the target is green, send the polecat FIX_NEEDED;"
        " branch and MR stay",
        "the failure appears on the branch but the target runs clean: polecat gets FIX_NEEDED, branch and MR kept",
    ),
    "refinery/handle-failures/file-bug": (
        "target fails as well (flaky or pre-existing), no bug open: open a bug, then merge",
        "When the target also fails (an old or flaky failure) and no open bug covers it, file a bug and then merge",
        "the same test breaks on target too, being flaky or pre-existing, with no open bug yet: report it, then merge",
    ),
    "refinery/merge-push/notify-merged": (
        "SHAs equal locally and on origin: MERGED to witness, run post-merge",
        "When the origin SHA is identical to the local one, mail the witness MERGED and do post-merge",
        "git rev-parse shows one SHA both locally and on origin: witness gets MERGED, then post-merge",
    ),
    "refinery/merge-push/retry-push": (
        "SHA mismatch or push rejected: no notifications, no closing; debug then re-push",
        "When origin's SHA is not the local SHA, or the push got refused, notify and close nothing,"
        " debug and push once more",
        "git push was rejected or origin shows another SHA than local: send no notice, close nothing,"
        " investigate, push anew",
    ),
    "deacon/zombie-scan/file-warrant": (
        "sessionless, nothing hooked or in_progress, quiet for more than 10 minutes: Boot gets a death warrant",
        "When it has no session, no work hooked or in_progress, and no activity for more than 10 minutes,"
        " file Boot a death warrant",
        "the session list lacks it, no work is hooked or in_progress, and it has been silent past 10 minutes:"
        " issue Boot a death warrant",
    ),
    "deacon/zombie-scan/none": (
        "session alive, work hooked, or active within 10 minutes",
        "When its session still runs, work is hooked, or it was active in the past 10 minutes",
        "the session list shows it live, its hook holds work, or it acted under 10 minutes ago",
    ),
    "deacon/plugin-run/dispatch": (
        "gate open: cooldown elapsed since previous run, or no run yet",
        "When the plugin has never run, or its cooldown has expired since it last ran, its gate opens",
        "the run log has no entry for it, or its last run is older than the cooldown: gate open",
    ),
    "deacon/plugin-run/skip": (
        "gate shut: last run inside cooldown",
        "When its last run is still inside the cooldown",
        "run log shows a run still within cooldown: gate shut",
    ),
    "deacon/orphan-check/dispatch-orphan-scan": (
        "in_progress bead, assignee's session dead",
        "When the owner of an in_progress bead lacks a running session",
        "session list lacks the assignee of an in_progress bead",
    ),
    "deacon/orphan-check/none": (
        "all in_progress assignees alive",
        "When each in_progress bead's assignee is running",
        "each in_progress owner is in the session list",
    ),
    "dog/triage-orphans/reset": (
        "assignee session dead, no branch or commits: set it open again",
        "When the assignee has no running session and left no work behind (no branch, no commit), reopen the issue",
        "the session list lacks the assignee and git shows no branch and no commits: return it to open",
    ),
    "dog/triage-orphans/recover": (
        "dead session, branch holds commits: preserve the branch, reopen and add a note",
        "When the session died yet commits sit on its branch, preserve that branch and reopen the issue with a note",
        "no live session, but git log shows work committed to the branch: branch stays, issue reopened with a note",
    ),
    "dog/triage-orphans/escalate": (
        "bead claims pushed work, branch missing: maybe data loss, mail mayor",
        "When the bead records a push yet the branch no longer exists, data may be lost, so tell the mayor by mail",
        "the branch cannot be found though the bead reports pushed work: data may be lost, write to the mayor",
    ),
    "dog/triage-orphans/skip": (
        "assignee still running: no orphan",
        "When the assignee has a live session, it is no orphan",
        "session list shows the assignee live: not orphaned",
    ),
    "dog/act/request-restart": (
        "dead session, hooked work: RESTART_POLECAT mail to witness",
        "When the session has died while work is still hooked, send the witness RESTART_POLECAT",
        "no session in the list but the hook holds work: witness gets a RESTART_POLECAT mail",
    ),
    "dog/act/kill-restart": (
        "session up, agent process dead, no build running in pane: kill that zombie session, then request a relaunch",
        "When the session persists without its agent process and nothing is building in the pane,"
        " terminate the zombie session and then request a relaunch",
        "the session list shows it but no agent process exists and its pane has no build going:"
        " end that zombie, then have it restarted",
    ),
    "dog/act/escalate": (
        "3 or more agents down in one scan: mass death; CRITICAL escalation; no restarts",
        "When this scan finds at least three agents down, treat it as mass death:"
        " escalate at CRITICAL and restart nobody",
        "the scan lists three or more dead agents: mass death, raise CRITICAL, no restarts at all",
    ),
    "dog/act/skip": (
        "agent is crew, mayor, witness or refinery (not in scope), bead closed, or build/test still going in pane",
        "When the agent is out of scope as crew, mayor, witness or refinery, or has a closed bead,"
        " or a test or build is still running in its pane",
        "role is crew, mayor, witness or refinery (outside scope), the bead reads closed,"
        " or its pane has tests or a build in progress",
    ),
    "dog/cleanup/drop": (
        "between one and max_orphans_for_sql orphan databases: DROP via SQL",
        "When orphans exist but number at most max_orphans_for_sql, DROP them using SQL",
        "orphan databases found, count at or below max_orphans_for_sql: SQL DROP each",
    ),
    "dog/cleanup/escalate": (
        "too many orphans (over max_orphans_for_sql): HIGH, no drop",
        "When orphans exceed max_orphans_for_sql, escalate at HIGH and drop nothing",
        "orphan count exceeds max_orphans_for_sql: HIGH escalation, keep all databases",
    ),
    "dog/cleanup/none": (
        "zero orphan-pattern matches",
        "When no database name fits an orphan pattern",
        "database list shows no orphan pattern hits",
    ),
}

NAMES: dict[str, tuple[str, ...]] = {
    "witness/survey-workers/restart": ("revive-session", "relaunch", "bring-back"),
    "witness/survey-workers/nudge": ("wake-agent", "prod-worker", "jog-agent"),
    "witness/survey-workers/reset-bead": ("requeue-bead", "orphan-reopen", "free-bead"),
    "witness/survey-workers/none": ("all-fine", "stand-by", "nothing-to-do"),
    "witness/process-cleanups/close-wisp": ("finish-wisp", "nothing-to-save", "wisp-done"),
    "witness/process-cleanups/push": ("upload-commits", "sync-upstream", "publish-commits"),
    "witness/process-cleanups/commit": ("commit-changes", "stash-pop-commit", "record-changes"),
    "witness/process-cleanups/escalate": ("deacon-recovery", "flag-recovery", "upstream-missing"),
    "witness/inbox-check/archive": ("note-and-archive", "store-mail", "log-protocol"),
    "witness/inbox-check/handle": ("fix-session", "repair-session", "witness-fix"),
    "witness/inbox-check/escalate": ("route-by-urgency", "refer-upward", "raise-help"),
    "refinery/process-branch/run-tests": ("start-tests", "go-test", "test-branch"),
    "refinery/process-branch/conflict-task": ("conflict-ticket", "rebase-conflict", "log-conflict"),
    "refinery/process-branch/close-mr": ("shut-mr", "branch-gone", "dismiss-mr"),
    "refinery/handle-failures/merge": ("ship-it", "accept-mr", "integrate"),
    "refinery/handle-failures/fix-needed": ("return-to-polecat", "request-fix", "bounce"),
    "refinery/handle-failures/file-bug": ("log-bug-merge", "open-bug", "track-flaky"),
    "refinery/merge-push/notify-merged": ("confirm-merge", "tell-witness", "merged-mail"),
    "refinery/merge-push/retry-push": ("push-again", "debug-push", "reattempt-push"),
    "deacon/zombie-scan/file-warrant": ("death-warrant", "flag-for-boot", "issue-warrant"),
    "deacon/zombie-scan/none": ("still-alive", "not-zombie", "no-warrant"),
    "deacon/plugin-run/dispatch": ("launch-plugin", "send-to-dog", "fire-plugin"),
    "deacon/plugin-run/skip": ("gate-closed", "cooling-down", "not-yet"),
    "deacon/orphan-check/dispatch-orphan-scan": ("orphan-scan", "hand-to-dog", "start-orphan-scan"),
    "deacon/orphan-check/none": ("no-orphans", "all-live", "nothing-abandoned"),
    "dog/triage-orphans/reset": ("clean-reopen", "back-to-open", "requeue"),
    "dog/triage-orphans/recover": ("rescue-branch", "reopen-with-note", "preserve-work"),
    "dog/triage-orphans/escalate": ("flag-data-loss", "alert-mayor", "lost-push"),
    "dog/triage-orphans/skip": ("still-owned", "assignee-alive", "owner-active"),
    "dog/act/request-restart": ("notify-witness", "request-revival", "restart-mail"),
    "dog/act/kill-restart": ("terminate-zombie", "kill-then-restart", "reap-session"),
    "dog/act/escalate": ("critical-alert", "mass-outage", "raise-critical"),
    "dog/act/skip": ("ignore", "out-of-scope", "let-run"),
    "dog/cleanup/drop": ("purge-orphans", "sql-drop", "remove-dbs"),
    "dog/cleanup/escalate": ("escalate-high", "over-limit", "report-excess"),
    "dog/cleanup/none": ("nothing-to-drop", "all-clean", "no-matches"),
}
