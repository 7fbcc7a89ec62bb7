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


class InboundDispatcher:
    """Hands packets to a pool of worker threads."""

    def __init__(self, handle: Callable[[dict], Any], workers: int, maxsize: int) -> None:
        self._handle = handle
        self._queue: queue.Queue[Any] = queue.Queue(maxsize)
        self._progress = [LoopProgress() for _ in range(workers)]
        self._workers = [
            threading.Thread(target=self._work, args=(progress,), name=f"handler-{i + 1}", daemon=True)
            for i, progress in enumerate(self._progress)
        ]
        self._dropped = 0
        self._last_full_report = 0.0
        self._stopping = False

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

    def is_alive(self) -> bool:
        return all(worker.is_alive() for worker in self._workers)

    def stuck_for(self, now: float) -> float:
        """How long every worker has been inside one packet (0 when one is free).

        One handler hanging is a bug in that handler, and the other workers go on
        serving; only when none is left does the daemon count as hung.
        """
        return min(progress.busy_for(now) for progress in self._progress)

    def start(self) -> None:
        for worker in self._workers:
            worker.start()

    def stop(self, timeout: float) -> None:
        """Finish what is queued within `timeout`; workers are daemons past that."""
        self._stopping = True
        for _ in self._workers:
            try:
                self._queue.put(None, timeout=timeout)
            except queue.Full:
                break
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))

    def _work(self, progress: LoopProgress) -> None:
        while True:
            packet = self._queue.get()
            if packet is None:
                return
            try:
                with progress.step():
                    self._handle(packet)
            except BaseException:  # noqa: BLE001 - a worker that ends silences a HANDLER_THREADS-th of the bot
                log.exception("bug while handling a packet from %s", packet.get("fromId") or packet.get("from"))
