"""The custom bd statuses of a training job, with their bd categories (active, wip, done, frozen)."""

from __future__ import annotations

JOB_STATUSES: dict[str, str] = {
    "corpus-validating": "active",
    "ready": "active",
    "training": "wip",
    "syncing": "wip",        # swarm: averaging with peers
    "checkpointing": "wip",  # writing checkpoints / export
    "evaluating": "wip",
    "degraded": "wip",       # swarm lost a peer but goes on
    "done": "done",
    "gate-failed": "done",   # every step ran; the model is registered but its eval gate failed
    "stopped": "frozen",     # a time limit stopped training with a checkpoint: rerun to resume
    "failed": "frozen",
}


def merge_custom_statuses(existing: str | None) -> str:
    """Return a `status.custom` value that keeps the town's own statuses and adds ours."""
    parts = [p.strip() for p in (existing or "").split(",") if p.strip()]
    names = {p.split(":", 1)[0] for p in parts}
    for name, cat in JOB_STATUSES.items():
        if name not in names:
            parts.append(f"{name}:{cat}")
    return ",".join(parts)
