"""Prometheus metrics (METRICS_LISTEN): the bot's own counters, read when scraped.

Nothing here is on a hot path. The collector reads, at scrape time, what the bot keeps
anyway: the link's status, the outbox's stats, the router's `BotStats`, the receive
queue. So a bot nobody scrapes pays nothing, and the numbers cannot drift from what
`/status` shows.

Names follow Prometheus's conventions: a `meshbot_` prefix, base units (seconds), `_total`
on counters, and ratios from 0 to 1 (`meshbot_channel_utilization_ratio` is the node's
percentage / 100). No label holds a node id or anything a user typed: commands are
labelled by their registered name, every other name counts as `unknown`, so the number
of series stays bounded whatever the mesh sends.

The registry is the collector's own (not the library's global one), and the HTTP server
is a plain threading server with the library's `MetricsHandler`, so that `Bot.stop()`
closes it; a port that cannot be bound is one WARNING, and the bot runs on without its
metrics: a monitoring side-channel must never take the bot down.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import sys
import threading
from typing import TYPE_CHECKING, Callable, Iterator, Optional, Protocol

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.exposition import MetricsHandler
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

import meshbot
from meshbot.config import METRICS_LISTEN_FORM, split_host_port
from meshbot.link.owner import LinkState
from meshbot.outbox.delivery import Outcome
from meshbot.outbox.sender import DropReason
from meshbot.router import LATENCY_BUCKETS_S, UNKNOWN_COMMAND, Latency

if TYPE_CHECKING:
    from meshbot.app import Bot

log = logging.getLogger(__name__)

# A scrape that has not sent its request within this long is closed: a client that
# connects and says nothing must not keep a thread forever.
_REQUEST_TIMEOUT_S = 10.0
# How often the server's loop looks at its stop flag: stop() waits at most this long.
_POLL_S = 0.1


class ChannelFigures(Protocol):
    """The node's own view of the channel, in percent as its DeviceMetrics telemetry
    reports them: the channel governor's `ChannelReading`."""

    @property
    def channel_utilization(self) -> float: ...  # % of the last minute the channel was busy

    @property
    def air_util_tx(self) -> Optional[float]: ...  # % of the last hour the node transmitted


# Where two figures come from. Each returns None when it knows nothing yet; the metric is
# then absent rather than a made-up 0.
AirtimeSource = Callable[[], Optional[float]]  # seconds the bot's own texts spent on air, since start
ChannelSource = Callable[[], Optional[ChannelFigures]]


class BotCollector:
    """A `prometheus_client` collector over one Bot's state, read at each scrape."""

    def __init__(
        self,
        bot: "Bot",
        *,
        airtime: Optional[AirtimeSource] = None,
        channel: Optional[ChannelSource] = None,
    ) -> None:
        self._bot = bot
        # The outbox sums the airtime of the texts the node accepted (the same figure per
        # text as its airtime budget records); the channel governor reads the node's
        # telemetry (or its node DB entry). Both can be replaced, for tests and for others.
        self._airtime: AirtimeSource = airtime or (lambda: bot.sender.stats().airtime_s)
        self._channel: ChannelSource = channel or bot.sender.governor.reading
        # Counters must never go down (Prometheus reads a drop as a restart and counts the
        # whole value again). The outbox un-counts a text the node refused late; the
        # exposed counter holds its highest value until the resend is counted.
        self._highest: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def _grow(self, name: str, label: str, value: float) -> float:
        with self._lock:
            key = (name, label)
            value = max(value, self._highest.get(key, value))
            self._highest[key] = value
            return value

    def _counter(self, name: str, doc: str, value: float) -> CounterMetricFamily:
        return CounterMetricFamily(name, doc, value=self._grow(name, "", value))

    def _labelled_counter(self, name: str, doc: str, label: str, values: dict[str, float]) -> CounterMetricFamily:
        family = CounterMetricFamily(name, doc, labels=[label])
        for key, value in values.items():
            family.add_metric([key], self._grow(name, key, value))
        return family

    def collect(self) -> Iterator[Metric]:
        bot = self._bot
        link = bot.link.status
        out = bot.sender.stats()
        stats = bot.stats

        info = GaugeMetricFamily("meshbot_build_info", "meshbot's version (always 1)", labels=["version"])
        info.add_metric([meshbot.__version__], 1)
        yield info
        yield GaugeMetricFamily(
            "meshbot_link_up", "1 while the link to the node is up (handshake done), else 0",
            value=1 if link.state is LinkState.UP else 0,
        )
        yield self._counter("meshbot_link_reconnects", "Times the link to the node was lost after being up", link.reconnects)
        if link.radio is not None:
            preset = GaugeMetricFamily("meshbot_node_info", "The node's LoRa preset (always 1)", labels=["preset"])
            preset.add_metric([link.radio.name], 1)
            yield preset

        # Commands: every registered name is shown from the start (at 0), so that rate()
        # and dashboards work before its first use; other names count as "unknown".
        names = sorted({cmd.name for cmd in bot.registry.commands()})
        received = dict.fromkeys([*names, UNKNOWN_COMMAND], 0)
        received.update(stats.by_command())
        yield self._labelled_counter(
            "meshbot_commands",
            "Commands received, by command (unknown, refused and rate-limited ones included)",
            "command", received,
        )
        errors = dict.fromkeys(names, 0)
        errors.update(stats.errors())
        yield self._labelled_counter(
            "meshbot_command_errors",
            "Handler runs that raised, returned something not a text, or timed out, by command",
            "command", errors,
        )
        timeouts = dict.fromkeys(names, 0)
        timeouts.update(bot.router.calls.timeouts())
        yield self._labelled_counter(
            "meshbot_handler_timeouts", "Handler calls written off past HANDLER_TIMEOUT_S, by command", "command", timeouts
        )
        yield GaugeMetricFamily(
            "meshbot_handler_threads_hung", "Written-off handler calls whose thread still runs",
            value=bot.router.calls.hung(),
        )
        yield self._latency(stats.latency())
        yield self._counter("meshbot_replies", "Replies the bot queued to commands (one reply may be several texts)", stats.replies)

        # The outbox.
        yield self._counter("meshbot_texts_sent", "Texts the node accepted from the bot", out.sent)
        yield self._counter("meshbot_texts_resent", "Texts the node refused and the bot sent again", out.resent)
        yield self._labelled_counter(
            "meshbot_texts_dropped", "Texts never sent, by reason", "reason",
            {reason.value: out.dropped_by.get(reason, 0) for reason in DropReason},
        )
        yield GaugeMetricFamily("meshbot_outbox_texts", "Texts waiting in the outbox (the one in flight included)", value=out.queued)
        yield self._labelled_counter(
            "meshbot_dm_outcomes", "DMs by what the mesh said of them: delivered (ACK), failed (NAK), unconfirmed (no word)",
            "outcome", {outcome.value: out.dms.totals.get(outcome, 0) for outcome in Outcome},
        )
        yield self._counter("meshbot_dm_retries", "DMs sent again after their delivery failed", out.dms.retried_total)
        yield GaugeMetricFamily("meshbot_dm_pending", "DMs awaiting their ACK or a retry", value=out.dms.pending)

        # The receive path.
        yield GaugeMetricFamily(
            "meshbot_inbound_queue_packets", "Packets waiting for a handler thread", value=bot.dispatcher.backlog
        )
        yield self._counter("meshbot_inbound_dropped", "Packets dropped because the inbound queue was full", bot.dispatcher.dropped)

        # The radio.
        airtime = self._airtime()
        if airtime is not None:
            yield self._counter("meshbot_airtime_seconds", "Seconds the bot's own texts spent on air (from the LoRa preset)", airtime)
        used_s, budget_s = bot.sender.airtime_used()
        yield GaugeMetricFamily(
            "meshbot_airtime_budget_used_seconds", "The bot's seconds on air in the last hour (the airtime budget's ledger)",
            value=used_s,
        )
        yield GaugeMetricFamily(
            "meshbot_airtime_budget_seconds", "Seconds on air the bot may use per rolling hour (AIRTIME_BUDGET_PCT)",
            value=budget_s,
        )
        figures = self._channel()
        if figures is not None:
            yield GaugeMetricFamily(
                "meshbot_channel_utilization_ratio",
                "How busy the channel was in the node's last minute, 0-1 (its DeviceMetrics)",
                value=figures.channel_utilization / 100.0,
            )
            if figures.air_util_tx is not None:
                yield GaugeMetricFamily(
                    "meshbot_node_air_util_tx_ratio",
                    "Share of the last hour the node transmitted, 0-1 (its DeviceMetrics)",
                    value=figures.air_util_tx / 100.0,
                )

    @staticmethod
    def _latency(latency: dict[str, Latency]) -> HistogramMetricFamily:
        family = HistogramMetricFamily(
            "meshbot_handler_duration_seconds", "Time a command's handler took, by command", labels=["command"]
        )
        for name in sorted(latency):
            runs = latency[name]
            cumulative, buckets = 0, []
            for bound, count in zip(LATENCY_BUCKETS_S, runs.buckets):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))
            buckets.append(("+Inf", runs.count))
            family.add_metric([name], buckets, runs.sum_s)
        return family


def metrics_registry(
    bot: "Bot", *, airtime: Optional[AirtimeSource] = None, channel: Optional[ChannelSource] = None
) -> CollectorRegistry:
    """A private registry: the bot's collector, and the process's CPU, memory and
    Python version (the library's standard collectors, so `process_*` dashboards work)."""
    registry = CollectorRegistry()
    registry.register(BotCollector(bot, airtime=airtime, channel=channel))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


class _Server(socketserver.ThreadingTCPServer):
    """One thread per scrape. A plain TCP server: http.server's would look up the
    listening address's DNS name at start, which can hang on a Pi without DNS."""

    daemon_threads = True
    allow_reuse_address = True  # a restart rebinds at once, past the old socket's TIME_WAIT

    def __init__(self, address: tuple[str, int], handler: type, family: int) -> None:
        self.address_family = family
        super().__init__(address, handler)

    def handle_error(self, request: object, client_address: object) -> None:
        # A scraper hanging up or going silent is the network's business; anything else is
        # a bug in the collector, worth its traceback (socketserver would print it to stderr).
        if isinstance(sys.exc_info()[1], OSError):
            log.debug("metrics request from %s failed", client_address, exc_info=True)
        else:
            log.exception("metrics: answering a scrape from %s failed", client_address)


class MetricsServer:
    """Serves a registry over HTTP (any path) on its own thread; `stop()` closes it."""

    def __init__(self, listen: str, registry: CollectorRegistry) -> None:
        self.listen = listen
        self._host, self._port = split_host_port(listen, METRICS_LISTEN_FORM)
        self._registry = registry
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def address(self) -> Optional[tuple[str, int]]:
        """(host, port) actually listened on (the port chosen when 0 was asked), or None."""
        server = self._server
        return None if server is None else server.server_address[:2]  # type: ignore[return-value]

    def start(self) -> bool:
        """Listen and serve; False (and one WARNING) when the address cannot be used."""
        base = MetricsHandler.factory(self._registry)
        handler = type("MeshbotMetricsHandler", (base,), {"timeout": _REQUEST_TIMEOUT_S})
        try:
            family, _, _, _, sockaddr = socket.getaddrinfo(
                self._host, self._port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
            server = _Server(sockaddr[:2], handler, family)
        except OSError as exc:
            log.warning(
                "cannot serve metrics on %s: %s; the bot runs without them (set METRICS_LISTEN to a free address)",
                self.listen, exc.strerror or exc,
            )
            return False
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": _POLL_S}, name="metrics", daemon=True
        )
        self._thread.start()
        host, port = server.server_address[:2]
        shown = f"[{host}]" if ":" in str(host) else host
        log.info("metrics on http://%s:%d/metrics", shown, port)
        return True

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()  # returns once the loop has seen the flag: within _POLL_S
        server.server_close()
        if self._thread is not None:
            self._thread.join(1.0)
