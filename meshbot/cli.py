"""meshbot: answers slash-commands on a Meshtastic mesh through one persistent link.

    meshbot [--config PATH]       run the daemon (foreground; systemd runs it so)
    meshbot --check-config        validate the config and exit 0 or 78
    meshbot --probe               connect to the node once, say what it is, exit 0 or 1
    meshbot --demo                run against a built-in simulated node
    meshbot init [PATH] [--full]  write a new, short config file (never overwrites one)
    meshbot try                   talk to the real bot as the simulated node's users

The same command runs as `meshbot` (pip/pipx), `python -m meshbot` and `python main.py`.

Only the standard library and meshbot's standard-library modules are imported at the top:
a Python without the dependencies (the system's, not the venv's) can still check the
config file's values, and is then told how to run meshbot rather than shown a traceback.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from meshbot import __version__
from meshbot.config import EX_CONFIG, ConfigError, Settings, load_settings
from meshbot.logs import setup_logging
from meshbot.systemd import ServiceNotifier
from meshbot.text import counted

if TYPE_CHECKING:
    from meshbot.app import Bot

log = logging.getLogger("meshbot")

# The dependencies are missing (or the probe failed): not a config error, and not worth
# systemd's restarts either way; 1 like any failure.
EX_FAILURE = 1
# The top-level package of meshbot itself (handlers/ is installed as meshbot.handlers): an
# ImportError naming it is a bug, not a missing dependency.
_OWN_PACKAGES = ("meshbot",)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="meshbot", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=None, metavar="PATH", help="config file (default: ./config.py; --demo reads none)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check-config", action="store_true", help="validate the config and exit (0 or 78)")
    parser.add_argument("--strict", action="store_true", help="any config warning (an unknown key...) is an error: exit 78")
    mode.add_argument(
        "--probe", action="store_true",
        help="connect to the node once, print its name, firmware, preset, channels and round trip, exit 0 (or 1)",
    )
    mode.add_argument("--demo", action="store_true", help="run against a built-in simulated node")
    parser.add_argument("--demo-seconds", type=float, default=0, metavar="N", help="end the demo after N seconds")
    parser.add_argument("--version", action="version", version=f"meshbot {__version__}")
    return parser.parse_args(argv)


def config_path(args: argparse.Namespace) -> Optional[Path]:
    """The config file to read: --config, else ./config.py; the demo reads only --config.

    `make demo` in a checkout that has a real config.py must not pick up its settings
    (the demo is the same for everyone).
    """
    if args.config is not None:
        return args.config
    return None if args.demo else Path("config.py")


class WarningCount(logging.Handler):
    """Counts the WARNING lines meshbot's own loggers write while the config is read."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["init"]:
        return _init(arguments[1:])
    trial = arguments[:1] == ["try"]
    if trial:
        arguments = ["--demo", *arguments[1:]]  # the demo's settings (no config.py unless --config), then the trial
    args = parse_args(arguments)
    setup_logging("WARNING" if args.probe else "INFO")
    warnings = WarningCount()
    log.addHandler(warnings)
    try:
        settings = load_settings(config_path(args), demo=args.demo)
    except ConfigError as exc:
        log.error("config error: %s", exc)
        return EX_CONFIG
    try:
        from meshbot.app import Bot
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] in _OWN_PACKAGES:
            raise  # a bug in meshbot, not a missing dependency
        log.error("%s", missing_dependency_hint(exc, args))
        return EX_FAILURE
    if args.probe:
        return _probe(settings)
    try:
        bot = Bot(settings)  # also checks what needs the commands (the schedule's, DISABLED_COMMANDS)
    except ConfigError as exc:
        log.error("config error: %s", exc)
        return EX_CONFIG
    log.removeHandler(warnings)
    if args.strict and warnings.count:
        log.error("config error: %s (--strict)", counted(warnings.count, "warning"))
        return EX_CONFIG
    if args.check_config:
        if warnings.count:
            log.info("config OK (%s)", counted(warnings.count, "warning"))
        else:
            log.info("config OK")
        return 0
    setup_logging(settings.LOG_LEVEL)

    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("%s received, stopping", signal.Signals(signum).name)
        stop.set()

    # SIGHUP (the terminal closed, or `systemctl kill -s HUP`) would end the process without
    # its stop path (no flush, no goodbye to the node): a clean stop like SIGTERM. No reload:
    # the config is read once, and a restart is how a changed one is taken up.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)

    if trial:
        from meshbot.trial import run_trial

        run_trial(settings, stop)
        return 0
    if args.demo:
        from meshbot.demo import run_demo

        run_demo(settings, args.demo_seconds, stop)
        return 0
    return run_daemon(bot, stop, ServiceNotifier())


def _init(argv: Sequence[str]) -> int:
    """`meshbot init [PATH] [--full]`: write a new config; exit 78 if one is there already."""
    from meshbot.starter import InitRefused, write_config

    parser = argparse.ArgumentParser(prog="meshbot init", description="write a new config file (never overwrites one)")
    parser.add_argument("path", nargs="?", type=Path, default=Path("config.py"), help="file or folder (default: ./config.py)")
    parser.add_argument("--full", action="store_true", help="every key set to its default (the full example)")
    args = parser.parse_args(argv)
    setup_logging("INFO")
    try:
        target = write_config(args.path, full=args.full)
    except InitRefused as exc:
        log.error("%s", exc)
        return EX_CONFIG
    log.info("wrote %s: set NODE_HOST (or CONNECTION = 'serial'), then: meshbot --config %s --check-config", target, target)
    return 0


def missing_dependency_hint(exc: ModuleNotFoundError, args: argparse.Namespace) -> str:
    """One line: which Python lacks what, and the command that works instead."""
    options = []
    if args.config is not None:
        options += ["--config", str(args.config)]
    options += ["--check-config"] if args.check_config else ["--probe"] if args.probe else ["--demo"] if args.demo else []
    # A checkout (or an install made by `make install`) has its venv beside the package.
    venv_python = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "python"
    if venv_python.exists() and Path(sys.executable).absolute() != venv_python:
        how = f"run it with meshbot's venv: {' '.join([str(venv_python), '-m', 'meshbot', *options])}"
    else:
        how = "install meshbot with its dependencies first (`make test` builds .venv; or `pip install .`)"
    return f"this Python ({sys.executable}) lacks meshbot's dependencies (no module named {exc.name!r}): {how}"


def _probe(settings: Settings) -> int:
    """--probe: one connection through the daemon's own link code, closed after."""
    from meshbot.probe import ProbeFailed, probe_node

    try:
        result = probe_node(settings)
    except ProbeFailed as exc:
        log.error("probe failed: %s", exc)
        return EX_FAILURE
    # The answer is the command's output, not a log line.
    sys.stdout.write(result.line() + "\n")
    sys.stdout.flush()
    return 0


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
