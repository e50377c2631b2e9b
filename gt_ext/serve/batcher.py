"""Feed concurrent API requests into the generator's continuous batch, fairly, from one worker thread.

A request waits in a bounded queue, one line per client. Between decode steps the worker moves
waiting requests into the running batch (`Generator.loop`, a `DecodeLoop`) while it has free rows,
always from the client with the fewest rows running (ties in turn), so a client with many requests
cannot keep another's out. Fair admission: a client with nothing running may join even a full
batch, on one of the engine's spare rows (`max_batch + 2` for the PyTorch engine), so an honest
client next to a flooding one waits for no one's request to finish. Requests leave the batch the
step they finish; each gets its pieces through its own callback, so the HTTP layer can stream them.
A request whose client went away (`request.cancel` set) is dropped from the queue, and its row stops
generating at the next step.

A request the loop refuses (prompt too long for the context, a seed torch refuses) fails alone, as
does a row whose sampling fails; a failed forward fails the rows it held, and the worker carries on
with the next requests.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
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


class StreamBatchLoop:
    """The `DecodeLoop` calls the batcher makes, over a generator that only has `stream_batch`:
    what waits at a step runs as one batch, to its end (no joining mid-way)."""

    def __init__(self, generator: Any, max_batch: int):
        self.gen = generator
        self.engine = SimpleNamespace(max_slots=max_batch)
        self.waiting: list[tuple[Any, Callable, Callable]] = []
        self.running: list = []  # nothing stays running between steps

    @property
    def idle(self) -> bool:
        return not self.waiting

    def add(self, request: Any, on_piece: Callable[[str], None], on_done: Callable[[BaseException | None], None],
            extra_row: bool = False) -> None:
        self.waiting.append((request, on_piece, on_done))

    def step(self) -> None:
        batch, self.waiting = self.waiting, []
        try:
            for i, piece in self.gen.stream_batch([r for r, _, _ in batch]):
                batch[i][1](piece)
        except Exception as e:  # the batch's requests fail; the caller logs and carries on
            for _, _, on_done in batch:
                on_done(e)
            raise
        for _, _, on_done in batch:
            on_done(None)

    def fail_all(self, err: BaseException) -> None:
        batch, self.waiting = self.waiting, []
        for _, _, on_done in batch:
            on_done(err)


class Batcher:
    """Owns the worker thread. `submit` raises `GtExtError` when the queue is full."""

    def __init__(self, generator: Any, max_batch: int = 8, max_queue: int = 64):
        self.gen = generator
        # A Generator's continuous-batching loop, stepped under its lock; a stand-in with only
        # `stream_batch` (the evals' FnGenerator) runs whole batches through `StreamBatchLoop`.
        self.loop = getattr(generator, "loop", None) or StreamBatchLoop(generator, max_batch)
        self._gen_lock = getattr(generator, "lock", None) or threading.Lock()
        self.max_batch = max_batch
        self.max_queue = max_queue
        self._lines: OrderedDict[str, deque[Job]] = OrderedDict()  # client -> its waiting jobs, in turn order
        self._size = 0
        self._running: Counter[str] = Counter()  # client -> its rows in the loop
        self._closing = False
        self._cv = threading.Condition()
        self._thread = threading.Thread(target=self._work, name="gt-ext-batcher", daemon=True)
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
        """Stop the worker after the current step; waiting and running requests fail."""
        with self._cv:
            self._closing = True
            self._cv.notify()
        self._thread.join(timeout=60)

    # ------------------------------------------------------------------------------------------ worker
    def _next_job(self, only_idle_clients: bool) -> Job | None:
        """The waiting job of the client with the fewest running rows (first in turn order on ties);
        with `only_idle_clients`, only a client with no running row. Caller holds the lock."""
        best: str | None = None
        for client, line in self._lines.items():
            while line and line[0].cancelled:
                line.popleft().on_done(None)
                self._size -= 1
            if not line:
                continue
            if only_idle_clients and self._running[client]:
                continue
            if best is None or self._running[client] < self._running[best]:
                best = client
        for client in [c for c, line in self._lines.items() if not line]:
            del self._lines[client]
        if best is None:
            return None
        line = self._lines[best]
        job = line.popleft()
        self._size -= 1
        if line:
            self._lines.move_to_end(best)  # the client's next job waits for the others' turn
        else:
            del self._lines[best]
        return job

    def _admit(self) -> list[Job]:
        """Jobs to move into the batch now (up to `max_batch` rows, then spare rows for clients with
        none running). Caller holds the lock."""
        out: list[Job] = []
        in_loop = len(self.loop.running) + len(self.loop.waiting)
        free = self.max_batch - in_loop
        spare = self.loop.engine.max_slots - in_loop
        while spare > 0 and self._size:
            job = self._next_job(only_idle_clients=free <= 0)
            if job is None:
                break
            out.append(job)
            self._running[job.client] += 1
            free -= 1
            spare -= 1
        return out

    def _finished(self, job: Job, err: BaseException | None) -> None:
        with self._cv:
            self._running[job.client] -= 1
            if self._running[job.client] <= 0:
                del self._running[job.client]
        job.on_done(err)

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._size and self.loop.idle and not self._closing:
                    self._cv.wait()
                if self._closing:
                    waiting = [j for line in self._lines.values() for j in line]
                    self._lines.clear()
                    self._size = 0
                    for job in waiting:
                        job.on_done(GtExtError("server shutting down"))
                    with self._gen_lock:
                        self.loop.fail_all(GtExtError("server shutting down"))
                    return
                admitted = self._admit()
            with self._gen_lock:
                for job in admitted:
                    try:  # the rows were counted here: the loop may use any of the engine's slots
                        self.loop.add(job.request, job.on_piece, lambda e, j=job: self._finished(j, e),
                                      extra_row=True)
                    except Exception as e:  # this request only (a prompt too long, a bad seed)
                        self._finished(job, e)
                if self.loop.idle:
                    continue
                try:
                    self.loop.step()
                except Exception as e:  # the loop already failed the rows it held; keep serving
                    log.warning("decode step failed: %s", e.__class__.__name__)
