"""Queue concurrent requests and decode them together in batches on one worker thread.

A request waits in a bounded queue; the worker takes up to `max_batch` waiting requests at once
and runs them as one `Generator.stream_batch` (one forward per step for all of them). Requests
that arrive during a batch wait for the next one. Each request gets its pieces through its own
callback, so the HTTP layer can stream them.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gt_ext.errors import GtExtError

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One queued request: the Generator `Request` and where its output goes."""

    request: Any
    on_piece: Callable[[str], None]
    on_done: Callable[[BaseException | None], None]


class Batcher:
    """Owns the worker thread. `submit` raises `GtExtError` when the queue is full."""

    def __init__(self, generator: Any, max_batch: int = 8, max_queue: int = 64, gather_s: float = 0.01):
        self.gen = generator
        self.max_batch = max_batch
        self.gather_s = gather_s  # after the first request, wait this long for company
        self._q: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._loop, name="gt-ext-batcher", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue a job (non-blocking)."""
        try:
            self._q.put_nowait(job)
        except queue.Full:
            raise GtExtError("server busy: request queue is full, retry later") from None

    def close(self) -> None:
        """Stop the worker after the current batch."""
        self._q.put(None)
        self._thread.join(timeout=60)

    def _take(self) -> list[Job] | None:
        first = self._q.get()
        if first is None:
            return None
        jobs = [first]
        while len(jobs) < self.max_batch:
            try:
                nxt = self._q.get(timeout=self.gather_s)
            except queue.Empty:
                break
            if nxt is None:
                self._q.put(None)
                break
            jobs.append(nxt)
        return jobs

    def _loop(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            try:
                for i, piece in self.gen.stream_batch([j.request for j in jobs]):
                    jobs[i].on_piece(piece)
            except BaseException as e:  # report to every waiter; the server stays up
                log.warning("batch failed: %s", e.__class__.__name__)
                for j in jobs:
                    j.on_done(e)
                continue
            for j in jobs:
                j.on_done(None)
