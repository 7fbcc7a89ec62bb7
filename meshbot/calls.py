"""Handler calls: every command handler runs guarded and under a deadline.

A handler is anyone's code (plugins included), and none of what it can do may reach the
daemon: it may raise anything (`argparse` raises SystemExit on bad arguments, which
would end the worker thread and then the daemon), return something that is not a text,
or never return (a lock, a socket without a timeout). So:

* the call is guarded against BaseException (KeyboardInterrupt reaches only the main
  thread, which never runs a handler; were it to, it goes through): a raise is the
  handler's bug, logged with its traceback, and the user is told the command failed;
* a return that is neither a str nor None is a bug too, logged once per command;
* a call still running `HANDLER_TIMEOUT_S` after it began is written off by the watcher
  thread: the user gets "timed out" at once, the call is counted, and the worker running
  it leaves the pool, which starts another in its place (`InboundDispatcher.write_off`).
  Python cannot stop a thread: the written-off one ends when its handler returns, and
  what it returns then is dropped;
* written-off threads are bounded: once `max_hung` calls of one command are written off
  and still running, that command is not run again until one of them returns (its
  users are told so at once). Other commands are never affected, and the total is at
  most `max_hung` times the number of commands;
* one sender has at most one call of a command running (a written-off one included):
  a user repeating a slow command does not take every worker. A repeat waits up to
  `_REPEAT_GRACE_S` for the call before it (two quick `/ping`s on two workers are both
  answered, in order) and is told "still busy" past that.

The handler runs on the receive worker itself, not on a thread of its own: the fast path
(a /ping) costs nothing more, and replies keep the order in which commands arrived. The
scheduler's calls, which nobody waits for in order, run on a thread of their own
(`call_detached`), so that a hung one never holds the scheduler.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

from meshbot.logs import RepeatedWarning

if TYPE_CHECKING:
    from meshbot.router import BotStats, CommandContext

log = logging.getLogger(__name__)

# How long a sender's repeat of a command waits for the call before it to end: longer than
# any quick handler takes on a loaded Pi, short enough that a repeat never holds a worker long.
_REPEAT_GRACE_S = 1.0


class Outcome(enum.Enum):
    """How a handler call ended, as the router answers it."""

    DONE = "done"  # returned a str or None: `reply`
    FAILED = "failed"  # raised, or returned something else: a bug in the handler
    TIMED_OUT = "timed_out"  # still running past HANDLER_TIMEOUT_S: written off
    LATE = "late"  # returned after it was written off: answered already, nothing to do
    RUNNING = "running"  # not run: the same sender's call of this command is still running
    HUNG = "hung"  # not run: too many of this command's calls were written off and still run


@dataclass(frozen=True)
class CallResult:
    outcome: Outcome
    reply: Optional[str] = None


class _Call:
    """One call in progress. `finished` and `written_off` change under the calls' lock only,
    so that exactly one of the handler's return and the deadline wins."""

    __slots__ = ("ctx", "key", "started", "deadline", "thread", "on_timeout", "done", "finished", "written_off")

    def __init__(self, ctx: "CommandContext", key: tuple[int, str], on_timeout: Callable[[], None]) -> None:
        self.ctx = ctx
        self.key = key
        self.on_timeout = on_timeout
        self.started = time.perf_counter()
        self.deadline = 0.0  # monotonic
        self.thread = threading.current_thread()
        self.done = threading.Event()
        self.finished = False
        self.written_off = False


class HandlerCalls:
    """Runs handlers for the router and the scheduler. Thread-safe. Owns the watcher thread
    (`start`, else with the first call)."""

    def __init__(self, timeout_s: float, max_hung: int, stats: "BotStats") -> None:
        self._timeout_s = timeout_s
        self._max_hung = max(1, max_hung)
        self._stats = stats
        # Told, under the lock, which thread ran a call that was written off (the dispatcher
        # replaces that worker). Set by the app; None: nobody to tell (a detached call).
        self.worker_written_off: Optional[Callable[[threading.Thread], None]] = None
        self._cond = threading.Condition()
        self._running: dict[tuple[int, str], _Call] = {}  # (sender, command): its call
        self._hung: dict[str, int] = {}  # written-off calls still running, by command
        self._timeouts: dict[str, int] = {}  # calls written off since the start, by command
        self._bad_returns: set[str] = set()  # commands whose wrong return type was logged
        self._watcher: Optional[threading.Thread] = None
        self._watcher_idle = False  # waiting, with no deadline to keep, for a call to wake it
        self._calls_started = self._calls_seen = 0  # calls begun; as the watcher last saw them
        self._stopping = False
        self._timeout_warning = RepeatedWarning(
            log, "{count} more handler calls timed out (HANDLER_TIMEOUT_S) in the last {seconds} s"
        )
        self._hung_warning = RepeatedWarning(
            log, "{count} more commands not run because earlier calls still hang, in the last {seconds} s"
        )

    # --- public -------------------------------------------------------------------------------
    def call(self, ctx: "CommandContext", on_timeout: Callable[[], None]) -> CallResult:
        """Run `ctx.command`'s handler on this thread. Past HANDLER_TIMEOUT_S, `on_timeout`
        is called on the watcher thread (answer the user there) and this call, when it
        returns at last, returns LATE."""
        name = ctx.command.name
        key = (ctx.message.sender, name)
        call = _Call(ctx, key, on_timeout)
        grace_until = time.monotonic() + min(_REPEAT_GRACE_S, self._timeout_s)
        while True:
            with self._cond:
                before = self._running.get(key)
                hung = self._hung.get(name, 0)
                refused = before is None and hung >= self._max_hung
                if before is None and not refused:
                    call.deadline = time.monotonic() + self._timeout_s
                    self._running[key] = call
                    self._calls_started += 1
                    self._start_watcher()
                    if self._watcher_idle:
                        # Only then (see _wait_for_expired): waking the watcher at every call
                        # would hand it the GIL each time and let other workers overtake this one.
                        self._cond.notify_all()
            if before is None:
                break
            if not before.done.wait(max(0.0, grace_until - time.monotonic())):
                return CallResult(Outcome.RUNNING)
        if refused:
            self._hung_warning.log(
                "/%s not run for !%08x: %d of its calls still run past HANDLER_TIMEOUT_S (%g s), the most kept;"
                " a bug in that handler", name, ctx.message.sender, hung, self._timeout_s,
            )
            return CallResult(Outcome.HUNG)
        call.started = time.perf_counter()  # the handler's own time, not the wait above
        result = self._invoke(ctx)
        elapsed = time.perf_counter() - call.started
        with self._cond:
            self._running.pop(key, None)
            call.finished = True
            late = call.written_off
            if late:
                self._hung[name] -= 1
        call.done.set()
        if late:
            log.info("handler /%s returned after %.0f s, past its deadline: its answer was dropped", name, elapsed)
            return CallResult(Outcome.LATE)
        self._stats.record_run(name, elapsed, failed=result.outcome is Outcome.FAILED)
        return result

    def call_detached(self, ctx: "CommandContext") -> CallResult:
        """Run the handler on a thread of its own and wait for its result or its deadline
        (the scheduler: a hung call must not hold it, and no worker is to be replaced)."""
        results: list[CallResult] = []
        ready = threading.Event()

        def timed_out() -> None:
            results.append(CallResult(Outcome.TIMED_OUT))
            ready.set()

        def run() -> None:
            result = self.call(ctx, timed_out)
            if result.outcome is not Outcome.LATE:
                results.append(result)
                ready.set()

        threading.Thread(target=run, name=f"call-/{ctx.command.name}", daemon=True).start()
        # The watcher answers at the deadline; the margin covers a watcher slowed by load.
        if not ready.wait(self._timeout_s + 10.0):
            return CallResult(Outcome.TIMED_OUT)
        return results[0]

    def timeouts(self) -> dict[str, int]:
        """Calls written off since the start, by command (for the metrics)."""
        with self._cond:
            return dict(self._timeouts)

    def hung(self) -> int:
        """Written-off calls whose thread still runs, all commands together."""
        with self._cond:
            return sum(self._hung.values())

    def start(self) -> None:
        """Start the watcher before the first command: starting a thread in the middle of a
        burst hands the GIL around and lets the workers answer out of order."""
        with self._cond:
            self._start_watcher()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    # --- the deadline ---------------------------------------------------------------------------
    def _start_watcher(self) -> None:
        """Under the lock."""
        if self._watcher is None and not self._stopping:
            self._watcher = threading.Thread(target=self._watch, name="handler-deadlines", daemon=True)
            self._watcher.start()

    def _watch(self) -> None:
        while True:
            with self._cond:
                expired = self._wait_for_expired()
                if expired is None:
                    return
            for call in expired:
                self._timed_out(call)

    def _wait_for_expired(self) -> Optional[list[_Call]]:
        """Under the lock: wait until calls pass their deadline; write them off. None: stop."""
        while not self._stopping:
            now = time.monotonic()
            live = [call for call in self._running.values() if not call.written_off]
            expired = [call for call in live if call.deadline <= now]
            if expired:
                for call in expired:
                    name = call.ctx.command.name
                    call.written_off = True
                    self._hung[name] = self._hung.get(name, 0) + 1
                    self._timeouts[name] = self._timeouts.get(name, 0) + 1
                    if self.worker_written_off is not None:
                        # Under the lock: the worker, back from its handler, reads that it
                        # was written off in the same state this decided.
                        self.worker_written_off(call.thread)
                return expired
            if live:
                # A call starting meanwhile has a later deadline than the earliest of these.
                self._cond.wait(min(call.deadline for call in live) - now)
            elif self._calls_started != self._calls_seen:
                # Calls came lately: stay armed for one timeout (a call starting within it ends
                # its timeout after this wait ends), so that a busy mesh never wakes the watcher.
                self._calls_seen = self._calls_started
                self._cond.wait(self._timeout_s)
            else:
                self._watcher_idle = True  # a quiet bot: sleep until the next call says so
                self._cond.wait()
                self._watcher_idle = False
        return None

    def _timed_out(self, call: _Call) -> None:
        name = call.ctx.command.name
        with self._cond:
            hung_now = self._hung.get(name, 0)
        self._stats.record_run(name, time.perf_counter() - call.started, failed=True)
        self._timeout_warning.log(
            "handler /%s for !%08x did not return within HANDLER_TIMEOUT_S (%g s): answered 'timed out', its"
            " thread written off (%d of /%s's still running; at %d it is not run again until one returns)",
            name, call.ctx.message.sender, self._timeout_s, hung_now, name, self._max_hung,
        )
        try:
            call.on_timeout()
        except Exception:  # a bug in the answer must not end the watcher
            log.exception("answering the timed-out /%s failed", name)

    # --- the handler ----------------------------------------------------------------------------
    def _invoke(self, ctx: "CommandContext") -> CallResult:
        name = ctx.command.name
        try:
            reply = ctx.command.func(ctx)
        except KeyboardInterrupt:
            if threading.current_thread() is threading.main_thread():
                raise  # the operator's Ctrl-C, never a handler's business
            log.exception("handler /%s failed on %r", name, ctx.message.text[:80])
            return CallResult(Outcome.FAILED)
        except SystemExit as exc:
            # What argparse does on bad arguments: in a handler it must end nothing but the call.
            log.error("handler /%s failed on %r: it raised SystemExit(%r)", name, ctx.message.text[:80], exc.code, exc_info=True)
            return CallResult(Outcome.FAILED)
        except BaseException:  # noqa: BLE001 - anything a handler raises is its bug, not the daemon's
            log.exception("handler /%s failed on %r", name, ctx.message.text[:80])
            return CallResult(Outcome.FAILED)
        if reply is None or isinstance(reply, str):
            return CallResult(Outcome.DONE, reply)
        with self._cond:
            first = name not in self._bad_returns
            self._bad_returns.add(name)
        if first:
            log.error(
                "bug in handler /%s: it returned %s, not a str or None; its users are told it failed"
                " (said once for this command)", name, type(reply).__name__,
            )
        return CallResult(Outcome.FAILED)
