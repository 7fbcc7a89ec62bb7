"""Handler calls: every command handler runs on a thread of its own, under a deadline.

A handler is anyone's code (plugins included), and none of what it can do may reach the
daemon: it may raise anything (`argparse` raises SystemExit on bad arguments, which
would end the worker thread and then the daemon), return something that is not a text,
or never return (a lock, a socket without a timeout). So:

* the call is guarded against BaseException (KeyboardInterrupt reaches only the main
  thread, which never runs a handler; were it to, it goes through): a raise is the
  handler's bug, logged with its traceback, and the user is told the command failed;
* a return that is neither a str nor None is a bug too, logged once per command;
* the caller waits at most `HANDLER_TIMEOUT_S`. Past it the user gets "timed out" and
  the call's thread is written off: counted, left to finish on its own (Python cannot
  stop a thread), and whatever it returns is dropped. The caller (a receive worker, the
  scheduler) is free at once, so the pool of workers is whole again;
* written-off threads are bounded: once `max_hung` calls of one command are written
  off and still running, that command is not run again until one of them returns (its
  users are told so at once). Other commands are never affected;
* one sender has at most one call of a command running (a written-off one included):
  a user repeating a slow command does not take every worker. A repeat waits up to
  `_REPEAT_GRACE_S` for the call before it (two quick `/ping`s on two workers are both
  answered, in order) and is told "still busy" past that.

A thread per call costs a fraction of a millisecond, nothing next to one text on LoRa,
and a thread that never hung is gone when its call returns.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

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
    RUNNING = "running"  # not run: the same sender's call of this command is still running
    HUNG = "hung"  # not run: too many of this command's calls were written off and still run


@dataclass(frozen=True)
class CallResult:
    outcome: Outcome
    reply: Optional[str] = None


class _Call:
    """One call, shared by its caller and its thread; `finished` and `written_off` change
    under the calls' lock only, so that exactly one of them wins the race at the deadline."""

    __slots__ = ("ctx", "key", "started", "done", "result", "finished", "written_off")

    def __init__(self, ctx: "CommandContext", key: tuple[int, str]) -> None:
        self.ctx = ctx
        self.key = key
        self.started = time.perf_counter()
        self.done = threading.Event()
        self.result = CallResult(Outcome.FAILED)
        self.finished = False
        self.written_off = False


class HandlerCalls:
    """Runs handlers for the router and the scheduler. Thread-safe; holds no thread of its
    own between calls."""

    def __init__(self, timeout_s: float, max_hung: int, stats: "BotStats") -> None:
        self._timeout_s = timeout_s
        self._max_hung = max(1, max_hung)
        self._stats = stats
        self._lock = threading.Lock()
        self._running: dict[tuple[int, str], _Call] = {}  # (sender, command): its call running
        self._hung: dict[str, int] = {}  # written-off calls still running, by command
        self._timeouts: dict[str, int] = {}  # calls written off since the start, by command
        self._bad_returns: set[str] = set()  # commands whose wrong return type was logged
        self._timeout_warning = RepeatedWarning(
            log, "{count} more handler calls timed out (HANDLER_TIMEOUT_S) in the last {seconds} s"
        )
        self._hung_warning = RepeatedWarning(
            log, "{count} more commands not run because earlier calls still hang, in the last {seconds} s"
        )

    @property
    def timeout_s(self) -> float:
        return self._timeout_s

    def call(self, ctx: "CommandContext") -> CallResult:
        """Run `ctx.command`'s handler for `ctx.message.sender`; return within HANDLER_TIMEOUT_S."""
        name = ctx.command.name
        key = (ctx.message.sender, name)
        call = _Call(ctx, key)
        grace_until = time.monotonic() + min(_REPEAT_GRACE_S, self._timeout_s)
        while True:
            with self._lock:
                before = self._running.get(key)
                hung = self._hung.get(name, 0)
                refused = before is None and hung >= self._max_hung
                if before is None and not refused:
                    self._running[key] = call
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
        thread = threading.Thread(target=self._run, args=(call,), name=f"call-/{name}", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # no thread to be had (the process's limit): the call is not made
            with self._lock:
                self._running.pop(key, None)
            log.error("/%s not run for !%08x: cannot start a thread for it", name, ctx.message.sender)
            return CallResult(Outcome.FAILED)
        if call.done.wait(self._timeout_s):
            return call.result
        with self._lock:
            if call.finished:  # it returned between the wait's end and the lock
                return call.result
            call.written_off = True
            self._hung[name] = hung_now = self._hung.get(name, 0) + 1
            self._timeouts[name] = self._timeouts.get(name, 0) + 1
        elapsed = time.perf_counter() - call.started
        self._stats.record_run(name, elapsed, failed=True)
        self._timeout_warning.log(
            "handler /%s for !%08x did not return within HANDLER_TIMEOUT_S (%g s): answered 'timed out', its"
            " thread written off (%d of /%s's still running; at %d it is not run again until one returns)",
            name, ctx.message.sender, self._timeout_s, hung_now, name, self._max_hung,
        )
        return CallResult(Outcome.TIMED_OUT)

    def timeouts(self) -> dict[str, int]:
        """Calls written off since the start, by command (for the metrics)."""
        with self._lock:
            return dict(self._timeouts)

    def hung(self) -> int:
        """Written-off calls whose thread still runs, all commands together."""
        with self._lock:
            return sum(self._hung.values())

    # --- on the call's thread -----------------------------------------------------------------
    def _run(self, call: _Call) -> None:
        result = self._invoke(call.ctx)
        elapsed = time.perf_counter() - call.started
        name = call.ctx.command.name
        with self._lock:
            self._running.pop(call.key, None)
            call.result, call.finished = result, True
            late = call.written_off
            if late:
                self._hung[name] -= 1
        call.done.set()
        if late:
            log.info("handler /%s returned after %.0f s, past its deadline: its answer was dropped", name, elapsed)
        else:
            self._stats.record_run(name, elapsed, failed=result.outcome is Outcome.FAILED)

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
        with self._lock:
            first = name not in self._bad_returns
            self._bad_returns.add(name)
        if first:
            log.error(
                "bug in handler /%s: it returned %s, not a str or None; its users are told it failed"
                " (said once for this command)", name, type(reply).__name__,
            )
        return CallResult(Outcome.FAILED)
