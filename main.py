#!/usr/bin/env python3
"""meshbot: answers slash-commands on a Meshtastic mesh through one persistent link.

    python main.py [--config PATH]       run the daemon (foreground; systemd runs it so)
    python main.py --check-config        validate the config and exit 0 or 78
    python main.py --demo                run against a built-in simulated node
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from meshbot import __version__
from meshbot.config import EX_CONFIG, ConfigError, Settings, load_settings
from meshbot.logs import setup_logging
from meshbot.systemd import ServiceNotifier
from meshbot.text import counted

if TYPE_CHECKING:
    from meshbot.app import Bot

log = logging.getLogger("meshbot")


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="meshbot", description=__doc__.splitlines()[1])
    parser.add_argument("--config", type=Path, default=None, help="config file (default: ./config.py)")
    parser.add_argument("--check-config", action="store_true", help="validate the config and exit (0 or 78)")
    parser.add_argument("--demo", action="store_true", help="run against a built-in simulated node")
    parser.add_argument("--demo-seconds", type=float, default=0, metavar="N", help="end the demo after N seconds")
    parser.add_argument("--version", action="version", version=f"meshbot {__version__}")
    return parser.parse_args(argv)


def _load(args: argparse.Namespace) -> Settings:
    path = args.config
    if path is None:
        default = Path("config.py")
        # The demo runs without a config file; the daemon needs one.
        path = default if (default.exists() or not args.demo) else None
    return load_settings(path, demo=args.demo)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    setup_logging("INFO")
    from meshbot.app import Bot

    try:
        settings = _load(args)
        bot = Bot(settings)  # also checks what needs the commands (the schedule's)
    except ConfigError as exc:
        log.error("config error: %s", exc)
        return EX_CONFIG
    if args.check_config:
        log.info("config OK")
        return 0
    setup_logging(settings.LOG_LEVEL)

    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("%s received, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    if args.demo:
        from meshbot.demo import run_demo

        run_demo(settings, args.demo_seconds, stop)
        return 0
    return run_daemon(bot, stop, ServiceNotifier())


def run_daemon(bot: "Bot", stop: threading.Event, notifier: ServiceNotifier) -> int:
    """Supervise the bot: systemd's status line and watchdog, until a signal or a hung loop."""
    bot.start()
    shown = bot.status_line()
    notifier.ready(shown)
    watchdog_every = notifier.watchdog_interval_s
    tick = min(1.0, watchdog_every or 1.0)
    next_watchdog = time.monotonic()
    code = 0
    while not stop.wait(tick):
        problem = bot.health_problem()
        if problem:
            # A bug stopped or hung one of the daemon's own loops: stop feeding the
            # watchdog and exit non-zero, so that systemd restarts meshbot.
            log.critical("fatal: %s; exiting so the service manager restarts meshbot", problem)
            shown = f"fatal: {problem}"
            code = 1
            break
        if watchdog_every is not None and time.monotonic() >= next_watchdog:
            notifier.watchdog()
            next_watchdog = time.monotonic() + watchdog_every
        line = bot.status_line()
        if line != shown:
            notifier.status(line)
            shown = line
    queued = bot.sender.stats().queued
    notifier.stopping(f"stopping: {shown}" if code else f"stopping, {counted(queued, 'text')} to flush")
    bot.stop()
    notifier.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
