"""Gas Town's agent roles and the task partitions of the corpus."""

from __future__ import annotations

from gt_ext.errors import GtExtError

ROLES: tuple[str, ...] = ("mayor", "deacon", "boot", "dog", "witness", "refinery", "polecat", "crew")
TASKS: tuple[str, ...] = ("bead-creation", "code-review", "git-workflow", "planning", "patrol", "general")

ROLE_DESCRIPTIONS: dict[str, str] = {
    "mayor": "town coordinator: plans work, creates convoys and beads, slings work to rigs",
    "deacon": "town patrol daemon agent: runs patrols, dispatches plugins to dogs, keeps the town healthy",
    "boot": "short-lived dog that checks the deacon every ~5 minutes and restarts it when stuck",
    "dog": "the deacon's infrastructure helper: runs one plugin or maintenance job and reports",
    "witness": "per-rig monitor of polecats: nudges idle ones, escalates stuck ones, cleans up zombies",
    "refinery": "per-rig merge queue: rebases, runs tests, merges MRs in order, reports failures",
    "polecat": "worker with a persistent git worktree: runs the bead on its hook, `gt done` when finished",
    "crew": "long-lived human-managed workspace agent: does what its human asks, following conventions",
}

# Progressive rollout: which roles may be served by a trained model, in order of risk.
ROLLOUT_ORDER: tuple[tuple[str, ...], ...] = (("deacon", "boot", "dog"), ("witness", "refinery"), ("polecat",), ("crew",))
NOT_YET_DEPLOYABLE: dict[str, str] = {
    "mayor": "the mayor coordinates the whole town and is the last role to move; deploying a trained mayor is refused in this version",
}


def check_role(role: str) -> str:
    """Return `role` if it is a Gas Town role, else raise a one-line error listing the roles."""
    if role not in ROLES:
        raise GtExtError(f"unknown role {role!r}: roles are {', '.join(ROLES)}")
    return role


def check_task(task: str) -> str:
    """Return `task` if it is a known task partition, else raise."""
    if task not in TASKS:
        raise GtExtError(f"unknown task {task!r}: tasks are {', '.join(TASKS)}")
    return task
