"""A training job as a bead: created when a formula run starts, moved through JOB_STATUSES.

Every status change is written in one bd call: the bead's status and a `status_history` list in its
metadata (visible in `bd show --json`), so the history is on the bead itself.
The job folder keeps `job.json` with the bead id, so a rerun (or `gt-ext job resume ID`) reuses it.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from gt_ext.atomic import atomic_write_json
from gt_ext.gastown.bd import Bd
from gt_ext.jobs.statuses import merge_custom_statuses

log = logging.getLogger(__name__)
JOB_LABEL = "training-job"
CORPUS_LABEL = "corpus-collection"


def ensure_statuses(bd: Bd) -> None:
    """Register the job statuses with bd (keeps any custom statuses already configured)."""
    try:
        current = bd.config_get("status.custom")
    except Exception:  # noqa: BLE001 - an unset key is an error in some bd versions
        current = None
    if isinstance(current, dict):
        current = current.get("value")
    merged = merge_custom_statuses(current if isinstance(current, str) else None)
    if merged != current:
        bd.config_set("status.custom", merged)


class JobBead:
    """Tracks one formula run on a bead (implements the runner's JobTracker protocol)."""

    def __init__(self, bd: Bd, bead_id: str, job_dir: Path, metadata: dict[str, Any]):
        self.bd = bd
        self.bead_id = bead_id
        self.job_dir = job_dir
        self.metadata = metadata
        self.status: str | None = (metadata.get("status_history") or [{}])[-1].get("status")

    def set_status(self, status: str, note: str = "", **meta: Any) -> None:
        """Move the bead to `status`, recording when and why."""
        entry = {"status": status, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if note:
            entry["note"] = note
        self.metadata.setdefault("status_history", []).append(entry)
        self.metadata.update(meta)
        self.bd.update(self.bead_id, status=status, extra=["--metadata", json.dumps(self.metadata)])
        self.status = status

    # -- JobTracker --------------------------------------------------------------------------------
    def step_started(self, step_id: str, status: str | None) -> None:
        if status and self.status == "corpus-validating" and status != "corpus-validating":
            self.set_status("ready", "corpus and config validated")
        if status and status != self.status:
            self.set_status(status, f"step {step_id}")
        self._note_corpus_hash()

    def step_finished(self, step_id: str) -> None:
        self.metadata.setdefault("steps_done", []).append(step_id)
        self._note_corpus_hash()

    def failed(self, reason: str) -> None:
        self.set_status("failed", reason, failure=reason)

    def stopped(self, reason: str) -> None:
        self.set_status("stopped", reason)

    def done(self, status: str = "done", reason: str = "all steps finished") -> None:
        """The job ran every step: `done`, or a final outcome such as `gate-failed`."""
        self.set_status(status, reason)
        corpus = self.metadata.get("corpus_bead")
        if corpus:
            try:
                self.bd.close(corpus, reason="corpus exported and used by job " + self.bead_id)
            except Exception as e:  # noqa: BLE001
                log.warning("could not close corpus bead %s: %s", corpus, e)

    def _note_corpus_hash(self) -> None:
        corpus = self.metadata.get("vars", {}).get("corpus_path")
        if corpus and "corpus_hash" not in self.metadata:
            from gt_ext.corpus.shards import corpus_hash

            h = corpus_hash(corpus)
            if h:
                self.metadata["corpus_hash"] = h


def open_job(formula: Any, given: dict[str, str], job_dir: Path, bd: Bd | None = None) -> JobBead:
    """The job bead of `job_dir`: reuse the one a previous run made, or create it (and its corpus bead)."""
    from gt_ext.jobs.places import job_beads_dir

    job_dir = Path(job_dir)
    bd = bd or Bd(job_beads_dir())
    record = job_dir / "job.json"
    if record.is_file():
        info = json.loads(record.read_text())
        issue = bd.show(info["bead_id"])
        meta = issue.metadata if isinstance(issue.metadata, dict) else {}
        return JobBead(bd, issue.id, job_dir, meta)
    ensure_statuses(bd)
    values = formula.resolve_vars(given, {"job_dir": str(job_dir), "formula": formula.name})
    role = values.get("role", "")
    corpus = bd.create(
        f"corpus collection for {formula.name}" + (f" ({role})" if role else ""),
        description=f"Corpus exported for job folder {job_dir}.",
        issue_type="task", labels=["gt-ext", CORPUS_LABEL] + ([f"role:{role}"] if role else []),
    )
    meta = {"formula": formula.name, "vars": values, "job_dir": str(job_dir), "role": role,
            "corpus_bead": corpus.id, "status_history": []}
    job = bd.create(
        f"{formula.name}" + (f" role={role}" if role else ""),
        description=f"Training job run by gt-ext from formula {formula.name}. Job folder: {job_dir}",
        issue_type="task", labels=["gt-ext", JOB_LABEL] + ([f"role:{role}"] if role else []),
        metadata=meta,
    )
    bd.run("dep", "add", job.id, corpus.id)
    job_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(record, {"bead_id": job.id, "beads_dir": str(bd.beads_dir), "corpus_bead": corpus.id})
    tracker = JobBead(bd, job.id, job_dir, meta)
    tracker.set_status("corpus-validating", "job created")
    return tracker


def mark_from_env(status: str, reason: str, keep: tuple[str, ...] = ()) -> bool:
    """Let a step's own process (e.g. a swarm peer) mark the job, via GT_EXT_JOB_BEAD/_BEADS_DIR,
    unless the job is already in `status` or in one of `keep`. Returns False (and does nothing)
    when the process does not run as a job step."""
    import os

    bead, beads_dir = os.environ.get("GT_EXT_JOB_BEAD"), os.environ.get("GT_EXT_JOB_BEADS_DIR")
    if not bead or not beads_dir:
        return False
    bd = Bd(beads_dir)
    issue = bd.show(bead)
    if issue.status == status or issue.status in keep:
        return True
    JobBead(bd, bead, Path("."), issue.metadata if isinstance(issue.metadata, dict) else {}).set_status(status, reason)
    return True


class StatusReporter:
    """Marks the job bead from a long-running step (the swarm peer: `syncing`, `degraded`) without
    ever slowing or breaking it: reports go through one background thread, in order, each status
    once; a bd failure is logged, never raised. Does nothing outside a job (no GT_EXT_JOB_BEAD)."""

    def __init__(self) -> None:
        import os
        import queue
        import threading

        self.enabled = bool(os.environ.get("GT_EXT_JOB_BEAD") and os.environ.get("GT_EXT_JOB_BEADS_DIR"))
        self._last: str | None = None
        self._q: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="job-status", daemon=True) if self.enabled else None
        if self._thread is not None:
            self._thread.start()

    # A job that lost a peer stays degraded: another peer's later "syncing" does not hide that.
    KEEP = {"syncing": ("degraded",)}

    def report(self, status: str, reason: str) -> None:
        """Queue `status` for the job bead unless it is the one reported last."""
        if self.enabled and status != self._last:
            self._last = status
            self._q.put((status, reason, self.KEEP.get(status, ())))

    def _run(self) -> None:
        while (item := self._q.get()) is not None:
            try:
                mark_from_env(*item)
            except Exception as e:  # noqa: BLE001 - a status report must never stop training
                log.warning("job status %s not recorded: %s", item[0], e)

    def close(self, timeout: float = 60.0) -> None:
        """Send what is queued, then stop the thread."""
        if self._thread is not None:
            self._q.put(None)
            self._thread.join(timeout)
