"""Receive path: a bounded queue between the library's publishing thread and the handlers.

The library runs every pubsub listener, connection events included, one after another
on a single thread. A weather lookup there would stall every user and the link's own
events, so the listener only enqueues; `HANDLER_THREADS` workers do the work. Handlers
run under a guard and a deadline (calls.py); a bug in the routing itself is logged with
its traceback and the worker goes on, whatever it raised.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable

from meshbot.health import LoopProgress

log = logging.getLogger(__name__)

_FULL_REPORT_EVERY_S = 60.0


class _Worker:
    """One receive worker: its thread, its progress, and whether it was written off."""

    __slots__ = ("thread", "progress", "written_off")

    def __init__(self, thread: threading.Thread, progress: LoopProgress) -> None:
        self.thread = thread
        self.progress = progress
        self.written_off = False


class InboundDispatcher:
    """Hands packets to a pool of worker threads, kept at `workers` threads.

    A worker whose handler call passed HANDLER_TIMEOUT_S is written off (`write_off`, told
    by calls.py): another takes its place at once, and the written-off one ends when its
    handler returns. The handler calls bound how many can be written off (calls.py)."""

    def __init__(self, handle: Callable[[dict], Any], workers: int, maxsize: int) -> None:
        self._handle = handle
        self._queue: queue.Queue[Any] = queue.Queue(maxsize)
        self._lock = threading.Lock()
        self._started = 0  # workers ever made, for their names
        self._workers = [self._new_worker() for _ in range(workers)]
        self._written_off = 0
        self._dropped = 0
        self._last_full_report = 0.0
        self._stopping = False

    def _new_worker(self) -> _Worker:
        self._started += 1
        progress = LoopProgress()
        thread = threading.Thread(target=self._work, args=(progress,), name=f"handler-{self._started}", daemon=True)
        return _Worker(thread, progress)

    def submit(self, packet: dict) -> None:
        """Never blocks: the caller is the library's publishing thread."""
        if self._stopping:
            return
        try:
            self._queue.put_nowait(packet)
        except queue.Full:
            self._dropped += 1
            now = time.monotonic()
            if now - self._last_full_report >= _FULL_REPORT_EVERY_S:
                self._last_full_report = now
                log.warning(
                    "inbound queue full (%d packets): dropping packets, %d so far; handlers are too slow",
                    self._queue.maxsize, self._dropped,
                )

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    @property
    def dropped(self) -> int:
        return self._dropped

    @property
    def written_off(self) -> int:
        """Workers replaced because their handler call passed its deadline, since the start."""
        return self._written_off

    def _pool(self) -> list[_Worker]:
        with self._lock:
            return [worker for worker in self._workers if not worker.written_off]

    def is_alive(self) -> bool:
        return all(worker.thread.is_alive() for worker in self._pool())

    def stuck_for(self, now: float) -> float:
        """How long every worker has been inside one packet (0 when one is free).

        One handler hanging is a bug in that handler, and the other workers go on
        serving; only when none is left does the daemon count as hung. A written-off
        worker is no longer in the pool: its replacement is.
        """
        return min((worker.progress.busy_for(now) for worker in self._pool()), default=0.0)

    def write_off(self, thread: threading.Thread) -> None:
        """The handler call on `thread` passed its deadline: start another worker in its place.
        A thread that is no worker of this pool (a detached call) is not replaced."""
        with self._lock:
            worker = next((w for w in self._workers if w.thread is thread and not w.written_off), None)
            if worker is None:
                return
            worker.written_off = True
            self._written_off += 1
            # Forget the written-off workers that ended: the list stays as long as the pool.
            self._workers = [w for w in self._workers if not w.written_off or w.thread.is_alive()]
            if self._stopping:
                return
            replacement = self._new_worker()
            self._workers.append(replacement)
            replacement.thread.start()

    def start(self) -> None:
        for worker in self._pool():
            worker.thread.start()

    def stop(self, timeout: float) -> None:
        """Finish what is queued within `timeout`; workers are daemons past that."""
        with self._lock:
            self._stopping = True
        pool = self._pool()
        for _ in pool:
            try:
                self._queue.put(None, timeout=timeout)
            except queue.Full:
                break
        deadline = time.monotonic() + timeout
        for worker in pool:
            if worker.thread.is_alive():
                worker.thread.join(max(0.0, deadline - time.monotonic()))

    def _work(self, progress: LoopProgress) -> None:
        me = threading.current_thread()
        while True:
            packet = self._queue.get()
            if packet is None:
                return
            try:
                with progress.step():
                    self._handle(packet)
            except BaseException:  # noqa: BLE001 - a worker that ends silences a HANDLER_THREADS-th of the bot
                log.exception("bug while handling a packet from %s", packet.get("fromId") or packet.get("from"))
            with self._lock:
                mine = next((w for w in self._workers if w.thread is me), None)
                if mine is not None and mine.written_off:
                    return  # replaced already: this thread's work is done
