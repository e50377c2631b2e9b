"""Queue concurrent requests and decode them together in batches on one worker thread.

A request waits in a bounded queue, one line per client; the worker takes up to `max_batch`
waiting requests at once, one per client in turn (so a client with many requests cannot keep
another's out of the next batch), and runs them as one `Generator.stream_batch` (one forward per
step for all of them). Requests that arrive during a batch wait for the next one. Each request
gets its pieces through its own callback, so the HTTP layer can stream them. A request whose client
went away (`request.cancel` set) is dropped from the queue, and its row stops generating.

If a batch fails before it produced any text (one request the validation did not catch), each of
its requests is run again alone, so only the bad one fails.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gt_ext.errors import GtExtError

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One queued request: the Generator `Request`, where its output goes, and whose it is."""

    request: Any
    on_piece: Callable[[str], None]
    on_done: Callable[[BaseException | None], None]
    client: str = ""

    @property
    def cancelled(self) -> bool:
        cancel = getattr(self.request, "cancel", None)
        return bool(cancel is not None and cancel.is_set())


class Batcher:
    """Owns the worker thread. `submit` raises `GtExtError` when the queue is full."""

    def __init__(self, generator: Any, max_batch: int = 8, max_queue: int = 64, gather_s: float = 0.01):
        self.gen = generator
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.gather_s = gather_s  # after the first request, wait this long for company
        self._lines: OrderedDict[str, deque[Job]] = OrderedDict()  # client -> its waiting jobs, in turn order
        self._size = 0
        self._closing = False
        self._cv = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="gt-ext-batcher", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue a job (non-blocking)."""
        with self._cv:
            if self._closing:
                raise GtExtError("server shutting down")
            if self._size >= self.max_queue:
                raise GtExtError("server busy: request queue is full, retry later")
            self._lines.setdefault(job.client, deque()).append(job)
            self._size += 1
            self._cv.notify()

    def close(self) -> None:
        """Stop the worker after the current batch."""
        with self._cv:
            self._closing = True
            self._cv.notify()
        self._thread.join(timeout=60)

    def _pop_round(self, want: int) -> list[Job]:
        """Up to `want` jobs, one per client in turn; skips cancelled ones. Caller holds the lock."""
        out: list[Job] = []
        while len(out) < want and self._lines:
            client, line = next(iter(self._lines.items()))
            job = line.popleft()
            self._size -= 1
            if line:
                self._lines.move_to_end(client)  # the client's next job waits for the others' turn
            else:
                del self._lines[client]
            if job.cancelled:
                job.on_done(None)
                continue
            out.append(job)
        return out

    def _take(self) -> list[Job] | None:
        with self._cv:
            while not self._size and not self._closing:
                self._cv.wait()
            if self._closing:
                for job in self._pop_round(self._size):
                    job.on_done(GtExtError("server shutting down"))
                return None
            jobs = self._pop_round(self.max_batch)
            if len(jobs) < self.max_batch and not self._closing:
                self._cv.wait(self.gather_s)  # company may be on its way
                jobs += self._pop_round(self.max_batch - len(jobs))
            return jobs

    def _run(self, jobs: list[Job]) -> tuple[BaseException | None, bool]:
        """Run one batch; return (error, whether any text went out)."""
        emitted = False
        try:
            for i, piece in self.gen.stream_batch([j.request for j in jobs]):
                emitted = True
                jobs[i].on_piece(piece)
        except BaseException as e:  # report to the waiters; the server stays up
            return e, emitted
        return None, emitted

    def _loop(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            if not jobs:
                continue
            err, emitted = self._run(jobs)
            if err is None:
                for j in jobs:
                    j.on_done(None)
            elif len(jobs) > 1 and not emitted:
                log.warning("batch of %d failed before any output (%s): running each alone", len(jobs),
                            err.__class__.__name__)
                for j in jobs:
                    one_err, _ = self._run([j])
                    j.on_done(one_err)
            else:
                log.warning("batch failed: %s", err.__class__.__name__)
                for j in jobs:
                    j.on_done(err)
