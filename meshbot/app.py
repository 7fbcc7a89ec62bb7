"""`Bot`: wires the link, the outbox, the receive path and the router together.

Threads, each with one job: `link` owns the connection; `outbox` sends; `handler-N`
run commands. The library adds its reader and publishing threads.
"""

from __future__ import annotations

import importlib.metadata
import logging
import time
import types
from typing import Any, Iterable, Optional, Sequence

from meshbot import handlers
from meshbot.config import ConfigError, Settings
from meshbot.dedup import RecentKeys
from meshbot.dispatch import InboundDispatcher
from meshbot.health import stall_limit_s
from meshbot.link.owner import InterfaceFactory, LinkState, NodeLink
from meshbot.metrics import MetricsServer, metrics_registry
from meshbot.plugins import load_commands
from meshbot.router import BotStats, CommandRegistry, Router, Services
from meshbot.scheduler import Scheduler, resolve_zone
from meshbot.share.server import ApiServer
from meshbot.outbox.sender import MessageSender
from meshbot.state.store import StateStore, resolve_state_dir
from meshbot.text import counted, format_duration
from meshbot.weather import WeatherClient

log = logging.getLogger(__name__)

# SIGTERM must end the process within 5 s (systemd's patience is longer, operators' is not).
STOP_BUDGET_S = 4.5


class Bot:
    """The daemon's parts, started and stopped in the right order."""

    def __init__(
        self,
        settings: Settings,
        *,
        interface_factory: Optional[InterfaceFactory] = None,
        modules: Sequence[types.ModuleType] = handlers.MODULES,
        plugins: Optional[Iterable[importlib.metadata.EntryPoint]] = None,
    ) -> None:
        """`modules`: the built-in commands; `plugins`: entry points (default: the installed ones)."""
        self.settings = settings
        self.registry: CommandRegistry = load_commands(modules, settings.DISABLED_COMMANDS, plugins)
        # Opened in start(): --check-config builds a Bot too, and must not create files.
        self.state = StateStore(resolve_state_dir(settings.STATE_DIR), settings.DEDUP_WINDOW_S)
        self.stats = BotStats(state=self.state)
        self.dispatcher = InboundDispatcher(self._route, settings.HANDLER_THREADS, settings.INBOUND_QUEUE_MAX)
        self.link = NodeLink(settings, self._on_packet, interface_factory=interface_factory)
        own_broadcasts = RecentKeys(settings.DEDUP_WINDOW_S, max_keys=1000)
        self.sender = MessageSender(settings, self.link, own_broadcasts, state=self.state)
        self.weather = WeatherClient(settings)
        # The node's TCP API served to the phone app and other clients, over the bot's link.
        self.share = ApiServer(settings, self.link, self.sender) if settings.API_LISTEN else None
        self.services = Services(
            settings, self.sender, self.link, self.registry, self.stats, self.weather,
            api_clients=self.share.client_count if self.share is not None else None, state=self.state,
        )
        self.router = Router(self.services, own_broadcasts)
        # A handler call past HANDLER_TIMEOUT_S: its worker leaves the pool, another takes its place.
        self.router.calls.worker_written_off = self.dispatcher.write_off
        # The zone matters only to 'at' entries: without any, the system is not asked.
        if any(entry.at is not None for entry in settings.SCHEDULED_BROADCASTS):
            zone, zone_name = resolve_zone(settings.TIMEZONE)
        else:
            zone, zone_name = None, ""
        self.scheduler = Scheduler(
            settings.SCHEDULED_BROADCASTS, self.router, self.sender, zone=zone, zone_name=zone_name
        )
        self.stall_limit_s = stall_limit_s(settings)
        # Read at each scrape; nothing is collected while nobody asks.
        self.metrics: Optional[MetricsServer] = (
            MetricsServer(settings.METRICS_LISTEN, metrics_registry(self)) if settings.METRICS_LISTEN else None
        )
        for entry in settings.SCHEDULED_BROADCASTS:
            if entry.command and self.router.lookup_text(entry.command)[0] is None:
                raise ConfigError(f"SCHEDULED_BROADCASTS: {entry.describe()}: no such command")

    def _on_packet(self, packet: dict) -> None:
        """On the library's publishing thread: the governor reads the node's own telemetry
        here (cheap, and never lost to a full inbound queue), the rest goes to the workers."""
        self.sender.governor.observe(packet)
        self.dispatcher.submit(packet)

    def _route(self, packet: dict) -> Any:
        return self.router.handle(packet)

    def start(self) -> None:
        log.info(
            "meshbot starting: node %s, %d commands, %d handler threads",
            self.link.address, len(self.registry.commands()), self.settings.HANDLER_THREADS,
        )
        if self.state.open():
            self.stats.commands += self.state.counters().get("commands", 0)
            answered = self.router.restore_answered()
            if answered:
                log.info("%d commands answered by the last run will not be answered again", answered)
        self.router.calls.start()
        self.dispatcher.start()
        self.sender.start()  # takes back the texts the last run left
        if self.share is not None:
            self.share.start()
        self.link.start()
        self.scheduler.start()
        if self.metrics is not None:
            self.metrics.start()  # a port in use is a WARNING: the bot runs on without metrics

    def health_problem(self) -> Optional[str]:
        """Why the daemon is not working, if one of its own loops died or hangs (a bug)."""
        if not self.link.is_alive():
            return "the link thread stopped"
        if not self.sender.is_alive():
            return "the outbox thread stopped"
        if not self.dispatcher.is_alive():
            return "a handler thread stopped"
        if not self.scheduler.is_alive():
            return "the scheduler thread stopped"
        if self.share is not None and not self.share.is_alive():
            return "the API server thread stopped"
        now = time.monotonic()
        for what, busy_for in (
            ("the link thread", self.link.progress.busy_for(now)),
            ("the outbox thread", self.sender.progress.busy_for(now)),
            ("every handler thread", self.dispatcher.stuck_for(now)),
            ("the scheduler thread", self.scheduler.progress.busy_for(now)),
        ):
            if busy_for > self.stall_limit_s:
                return f"{what} has been stuck in one step for {busy_for:.0f} s"
        return None

    def status_line(self) -> str:
        """One line for `systemctl status meshbot` (systemd's STATUS=)."""
        link = self.link.status
        if link.state is LinkState.UP:
            reconnects, commands = counted(link.reconnects, "reconnect"), counted(self.stats.commands, "command")
            clients = "" if self.share is None else f" · {counted(self.share.client_count(), 'API client')}"
            return f"link up to {link.address} · {reconnects} · {commands}{clients}"
        if not link.last_cause:
            return f"connecting to {link.address}"  # the first attempt, not failed yet
        down_for = format_duration(time.monotonic() - (link.down_since or link.since), decimals=0)
        return f"link down {down_for}: {link.last_cause}"

    def stop(self, budget_s: float = STOP_BUDGET_S) -> None:
        """Stop taking commands, flush the outbox until the deadline, close the link."""
        started = time.monotonic()
        deadline = started + budget_s
        if self.metrics is not None:
            self.metrics.stop()
        self.scheduler.stop()
        self.dispatcher.stop(timeout=min(1.0, budget_s / 4))
        self.router.calls.stop()
        if self.share is not None:
            self.share.stop()
        # Leave the link a second to say goodbye to the node after the flush.
        self.sender.stop(deadline=deadline - 1.0)
        self.link.stop(timeout=max(0.1, deadline - time.monotonic()))
        self.weather.close()
        self.state.close()
        log.info("meshbot stopped in %.1f s", time.monotonic() - started)
