"""Soak: the real daemon for N minutes against the simulated node, with a fault every minute.

    python bench/soak.py --minutes 30        (make soak MINUTES=30)

The bot is `main.py` in its own process with the default settings (20 s probes, 45 s
link timeout, texts 2 s apart as the node sees them, pacing by airtime) against the
simulated node as firmware 2.7.13 behaves: its 2 s text limit refuses silently, it keeps
packets for its client while none is connected, it answers DMs with ACKs (one user is out
of reach: NAKs), and every frame is delayed by up to 300 ms of jitter in each direction
(a Wi-Fi link). Simulated users send a command every few seconds, round-robin, on
channels and by DM; each command asks for exactly one reply. At each minute a fault is
injected, in turn:

  FIN          the node closes the connection;
  RST          the node resets it;
  reboot 10 s  the node reboots: connection reset, refused for 10 s, reboot count + 1;
  silent 60 s  the connection hangs for 60 s: socket open, nothing answered, new
               connections accepted but never configured (a dead Wi-Fi bridge);
  hang 30 s    the node's process stalls for 30 s: nothing read or answered, commands
               kept for the client, new connections left in the kernel's backlog, all
               served in order when it resumes (meshtasticd on a Pi whose process stalls);
  rate limit   the node refuses the next two texts (silently, as 2.7.13 does);
  SIGKILL      a burst of four commands, and once the node took the first reply, the bot
               is killed with SIGKILL and started again with the same config and STATE_DIR
               (a crash, the watchdog, the OOM killer): the other replies come after the
               restart, from the durable outbox, once each and in order.

A command counts as expected when the node handed it to the bot (`node.handed`): commands
typed while the link is down are kept by the node and handed over after the reconnect. No
command is sent within a second of a fault, so a lost reply means the bot lost it.
Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

from common import Row, kill_and_restart, print_table, rss_mb, start_bot, stop_bot, wait_for

from meshbot.sim.node import SimulatedNode, SimUser

FAULTS = ("FIN", "RST", "reboot 10 s", "silent 60 s", "hang 30 s", "rate limit", "SIGKILL")
_JITTER_S = 0.3
_BUDGET_PCT = 20.0
_QUIET_BEFORE_FAULT_S = 1.0
_QUIET_AFTER_FAULT_S = 0.5
_DRAIN_S = 120.0  # after the last minute: time for replies still queued
# The last user is out of reach: DMs to it fail (NAK), are sent once more, then given up.
USERS = tuple(SimUser(0x50AC0000 + i, f"SK{i:02d}", f"Soak user {i}", reachable=i != 9) for i in range(12))

_LOST = re.compile(r"link to \S+ lost after")
_UP = re.compile(r"link up after")
_FIRST_UP = re.compile(r"link up to ")  # a new process's first connection, after a SIGKILL
_REJECTED = re.compile(r"(rate limited by the node|not taken by the node).*; sending it again")
_DM_RETRIED = re.compile(r"not delivered \(\w+\); sending it again")
_DM_GIVEN_UP = re.compile(r"gave up text to")
_DM_STATUS = re.compile(r"DMs 24h: (\d+) delivered, (\d+) failed")
_AIR_STATUS = re.compile(r"air (\d+)s/1h \((\d+)% of budget\)")
_EXPIRED = re.compile(r"not sent within OUTBOX_TTL_S")


class BotLog:
    """The bot's stderr, each line stamped with the time it was read."""

    def __init__(self, stream) -> None:  # type: ignore[no-untyped-def]
        self.lines: list[tuple[float, str]] = []
        self.attach(stream)

    def attach(self, stream) -> None:  # type: ignore[no-untyped-def]
        """Also read this stream (the bot's next process, after a SIGKILL) into the same lines."""
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:  # type: ignore[no-untyped-def]
        for line in stream:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def first_after(self, pattern: re.Pattern[str], after: float) -> Optional[float]:
        return next((at for at, line in list(self.lines) if at >= after and pattern.search(line)), None)

    def count(self, pattern: re.Pattern[str]) -> int:
        return sum(1 for _, line in list(self.lines) if pattern.search(line))

    def errors(self) -> list[str]:
        return [line for _, line in list(self.lines) if " ERROR " in line or " CRITICAL " in line or "Traceback" in line]


@dataclass
class FaultRecord:
    kind: str
    at: float
    refused_at: Optional[float] = None  # rate limit: when the node refused the first text
    refusals: int = 0  # rate limit: refusals the fault caused
    detected_s: Optional[float] = None
    recovered_s: Optional[float] = None


@dataclass
class Tally:
    sent: int = 0  # commands typed by users
    commands: set[int] = field(default_factory=set)  # their packet ids


class Soak:
    def __init__(self, minutes: float, command_every_s: float) -> None:
        self.minutes = minutes
        self.command_every_s = command_every_s
        # Firmware 2.7.13 as measured: the 2 s text limit (silent), ACKs, a phone queue.
        self.node = SimulatedNode(users=USERS, link_jitter_s=_JITTER_S)
        self.tally = Tally()
        self.faults: list[FaultRecord] = []
        self.status: Optional[str] = None
        self.rss: list[float] = []
        self._next_user = 0

    # --- driving ---------------------------------------------------------------------------------
    def run(self) -> list[Row]:
        with self.node:
            # 12 users, a command every 5 s: about 14 % of a LONG_FAST hour on the air.
            self.proc = start_bot(self.node.port, LOG_LEVEL="INFO", AIRTIME_BUDGET_PCT=_BUDGET_PCT)
            self.log = log = BotLog(self.proc.stderr)
            try:
                if not self.node.wait_connected(30):
                    raise SystemExit("the bot never connected")
                started = time.monotonic()
                end = started + self.minutes * 60
                next_fault = started + 60
                next_command = started
                next_rss = started + 60
                fault_index = 0
                while time.monotonic() < end:
                    now = time.monotonic()
                    if now >= next_fault:
                        self._inject(FAULTS[fault_index % len(FAULTS)])
                        fault_index += 1
                        next_fault += 60
                    if now >= next_rss:
                        self.rss.append(rss_mb(self.proc.pid))
                        next_rss += 60
                    quiet = next_fault - now < _QUIET_BEFORE_FAULT_S or (
                        self.faults and now - self.faults[-1].at < _QUIET_AFTER_FAULT_S
                    )
                    if now >= next_command and not quiet:
                        self._command()
                        next_command += self.command_every_s
                    time.sleep(0.05)
                self.rss.append(rss_mb(self.proc.pid))
                wait_for(lambda: self._missing() == 0, _DRAIN_S)
                self.status = self._ask_status()
            finally:
                stop_bot(self.proc)
            self._measure_faults(log)
            return self._rows(log)

    def _command(self) -> None:
        user = USERS[self._next_user % len(USERS)]
        kind = self._next_user % 3
        self._next_user += 1
        self.tally.sent += 1
        if kind == 0:
            packet = self.node.user_packet(user, "/ping", dm=True)
        elif kind == 1:
            packet = self.node.user_packet(user, "/ping", channel=0)
        else:
            packet = self.node.user_packet(user, f"/echo soak {self.tally.sent}", channel=1)
        self.tally.commands.add(packet.id)
        self.node.deliver(packet)  # handed now, or kept for the client until it is back

    def _inject(self, kind: str) -> None:
        record = FaultRecord(kind, time.monotonic())
        self.faults.append(record)
        print(f"{time.strftime('%H:%M:%S')} fault {len(self.faults)}: {kind}", file=sys.stderr, flush=True)
        if kind == "FIN":
            self.node.drop()
        elif kind == "RST":
            self.node.drop(rst=True)
        elif kind == "reboot 10 s":
            self.node.reboot(10)
        elif kind == "silent 60 s":
            self.node.go_silent(seconds=60)
        elif kind == "hang 30 s":
            self.node.hang(30)
        elif kind == "rate limit":
            threading.Thread(target=self._refuse_two_texts, args=(record,), daemon=True).start()
        elif kind == "SIGKILL":
            self._kill_with_replies_queued(record)

    def _kill_with_replies_queued(self, record: FaultRecord) -> None:
        """Four DM /pings at once: their replies wait in the outbox, 2 s apart. Once the node
        took the first, SIGKILL the bot and start it again with the same config file (the same
        STATE_DIR). The three others must come from the durable outbox, each once."""
        accepted = len(self.node.texts)
        for user in USERS[:4]:
            self.tally.sent += 1
            packet = self.node.user_packet(user, "/ping", dm=True)
            self.tally.commands.add(packet.id)
            self.node.deliver(packet)
        wait_for(lambda: len(self.node.texts) > accepted, 10)
        time.sleep(0.2)  # the other replies are in the store within milliseconds
        record.at = time.monotonic()
        self.proc = kill_and_restart(self.proc)
        self.log.attach(self.proc.stderr)

    def _refuse_two_texts(self, record: FaultRecord) -> None:
        """Turn the node's text limit up until it has refused two texts, then back to 2 s."""
        before = self.node.counters.rate_limited
        self.node.text_rate_limit_s = 3600.0
        if wait_for(lambda: self.node.counters.rate_limited > before, 50):
            record.refused_at = time.monotonic()
            wait_for(lambda: self.node.counters.rate_limited >= before + 2, 50)
        self.node.text_rate_limit_s = 2.0
        record.refusals = self.node.counters.rate_limited - before

    def _ask_status(self) -> Optional[str]:
        """The bot's own /status, as a user gets it (DMs delivered and failed, airtime)."""
        asked = self.node.user_text(USERS[0], "/status", dm=True)
        if not wait_for(lambda: any(t.reply_id == asked for t in self.node.texts), 30):
            return None
        return next(t.text for t in self.node.texts if t.reply_id == asked)

    # --- measuring ---------------------------------------------------------------------------------
    @property
    def _expected(self) -> set[int]:
        """Commands the node handed to the bot: each must get its one reply."""
        commands = self.tally.commands
        return {packet_id for packet_id in self.node.handed if packet_id in commands}

    def _replies(self) -> collections.Counter[int]:
        """Replies per command as users see them: a text the bot had written but not seen
        confirmed when it was killed goes out again with the same packet id, and receiving
        nodes drop that copy by (from, id); a DM to the out-of-reach user is sent again after
        its NAK (DM_RETRIES) and reaches nobody. Any other second copy is a duplicate."""
        expected = self._expected
        unreachable = {user.num for user in USERS if not user.reachable}
        distinct = {(t.reply_id, 0 if t.to in unreachable else t.id) for t in self.node.texts if t.reply_id in expected}
        return collections.Counter(reply_id for reply_id, _ in distinct)

    def _same_id_copies(self) -> int:
        expected = self._expected
        return sum(1 for t in self.node.texts if t.reply_id in expected) - sum(self._replies().values())

    def _missing(self) -> int:
        return len(self._expected) - len(self._replies())

    def _measure_faults(self, log: BotLog) -> None:
        for record in self.faults:
            if record.kind == "SIGKILL":
                record.detected_s = 0.0  # nothing to detect: the process is gone
                up_at = log.first_after(_FIRST_UP, record.at)
                record.recovered_s = None if up_at is None else up_at - record.at
                continue
            if record.kind == "rate limit":
                # From the node's refusal to the bot's line saying it sends the text again.
                # (The refusal is seen by polling every 5 ms, so the line may come first: 0.)
                at = log.first_after(_REJECTED, record.at)
                if at is not None and record.refused_at is not None:
                    record.detected_s = max(0.0, at - record.refused_at)
                    # Recovered: the next text the node accepted (the refused one, sent again).
                    accepted = [t.at for t in self.node.texts if t.at > record.refused_at]
                    record.recovered_s = min(accepted) - record.refused_at if accepted else None
                continue
            lost_at = log.first_after(_LOST, record.at)
            if lost_at is not None:
                record.detected_s = lost_at - record.at
                up_at = log.first_after(_UP, lost_at)
                record.recovered_s = None if up_at is None else up_at - record.at

    def _rows(self, log: BotLog) -> list[Row]:
        replies = self._replies()
        expected = len(self._expected)
        delivered = len(replies)
        duplicates = sum(n - 1 for n in replies.values())
        expired = log.count(_EXPIRED)
        lost = expected - delivered - expired
        fault_refusals = sum(r.refusals for r in self.faults if r.kind == "rate limit")
        other_refusals = self.node.counters.rate_limited - fault_refusals
        rows = [
            Row("soak", f"duration, faults injected ({len(self.faults)})", self.minutes, "min"),
            Row("soak", "commands sent by users", self.tally.sent, ""),
            Row("soak", "replies expected (commands the node handed to the bot)", expected, ""),
            Row("soak", "replies delivered", delivered, ""),
            Row("soak", "replies dropped by TTL (logged)", expired, ""),
            Row("soak", "lost (expected, not delivered, not expired)", lost, "", "0", lost == 0),
            Row("soak", "duplicates", duplicates, "", "0", duplicates == 0),
            Row("soak", "copies nobody sees twice (same packet id after a SIGKILL; DM retries to the out-of-reach user)",
                self._same_id_copies(), ""),
            Row("soak", "reconnects (link up again, from the bot's log)", log.count(_UP), ""),
            Row("soak", "connections the node accepted after the first", self.node.counters.connections - 1, ""),
            Row("soak", f"texts the node refused, {_JITTER_S * 1000:.0f} ms jitter, outside the rate-limit fault",
                other_refusals, "", "0", other_refusals == 0),
            Row("soak", "texts refused during the rate-limit faults, recognised and re-sent", log.count(_REJECTED), ""),
        ]
        dms = _DM_STATUS.search(self.status or "")
        if dms:
            rows.append(Row("soak", "DMs delivered (ACK from the destination), from /status", int(dms.group(1)), ""))
            rows.append(Row("soak", "DMs failed (NAK, after the retry), from /status", int(dms.group(2)), ""))
        air = _AIR_STATUS.search(self.status or "")
        if air:
            rows.append(Row("soak", f"bot airtime in the last hour, from /status (budget {_BUDGET_PCT:g} %)",
                            int(air.group(1)), "s"))
            rows.append(Row("soak", "  as % of the budget", int(air.group(2)), "%", "<= 100", int(air.group(2)) <= 100))
        rows.append(Row("soak", "DMs sent again after a NAK", log.count(_DM_RETRIED), ""))
        rows.append(Row("soak", "DMs given up", log.count(_DM_GIVEN_UP), ""))
        for kind in FAULTS:
            records = [r for r in self.faults if r.kind == kind]
            if records and kind == "SIGKILL":
                recovered = [r.recovered_s for r in records if r.recovered_s is not None]
                rows.append(Row("soak", f"SIGKILL: max time from the kill to the new process's link up ({len(records)} kills)",
                                max(recovered) if recovered else float("nan"), "s", "", len(recovered) == len(records)))
                continue
            if not records or kind == "hang 30 s":
                # Within LINK_TIMEOUT_S (45 s) the link rides a 30 s hang out: nothing to
                # detect; what counts is that the commands kept meanwhile get their replies.
                continue
            detected = [r.detected_s for r in records if r.detected_s is not None]
            missed = len(records) - len(detected)
            label = f"{kind}: max detection ({len(records)} faults{f', {missed} undetected' if missed else ''})"
            if kind == "rate limit":
                label += ", refusals seen by polling every 5 ms"
            rows.append(Row("soak", label, max(detected) if detected else float("nan"), "s",
                            "<= 45" if kind in ("silent 60 s", "hang 30 s") else "", missed == 0))
            recovered = [r.recovered_s for r in records if r.recovered_s is not None]
            if recovered:
                what = "from the refusal to the text accepted" if kind == "rate limit" else "from fault to link up"
                rows.append(Row("soak", f"{kind}: max time {what}", max(recovered), "s"))
        if len(self.rss) >= 2:
            growth = self.rss[-1] - self.rss[0]
            rows.append(Row("soak", "RSS after 1 min", self.rss[0], "MB"))
            rows.append(Row("soak", "RSS at the end", self.rss[-1], "MB"))
            if "SIGKILL" not in FAULTS:  # a killed bot's successor is a new process: no growth to judge
                rows.append(Row("soak", "RSS growth", growth, "MB", "<= 5", growth <= 5.0))
        errors = log.errors()
        rows.append(Row("soak", "ERROR lines or tracebacks in the bot's log", len(errors), "", "0", not errors))
        for line in errors[:5]:
            print("bot:", line, file=sys.stderr)
        return rows


def run(quick: bool = False, minutes: Optional[float] = None) -> list[Row]:
    """For run_all.py: one full cycle of the seven faults (8 min), or 3 min with --quick."""
    return Soak(minutes if minutes is not None else (3.0 if quick else 8.0), command_every_s=5.0).run()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--command-every", type=float, default=5.0, metavar="S", help="seconds between commands")
    args = parser.parse_args()
    rows = Soak(args.minutes, args.command_every).run()
    print_table(rows)
    return 0 if all(r.ok is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
