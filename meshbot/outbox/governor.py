"""The channel-utilization governor: the bot steps back when the channel is busy.

The node measures how busy the channel is and tells its client. In the firmware
(`DeviceTelemetryModule`, modules/Telemetry/DeviceTelemetry.cpp and .h) the module runs
once a minute (`sendToPhoneIntervalMs`, first run 45 s after boot); when it is not its
turn to broadcast on the mesh it sends the client a TELEMETRY_APP packet from the node's
own number with `DeviceMetrics`, if the queue towards the client is empty, and every
10 minutes (`sendStatsToPhoneIntervalMs`) a `LocalStats` one as well; its own broadcast
(every `device_update_interval`, 30 min by default) reaches the client too. Both carry
`channel_utilization` (% of the last minute the channel was busy: everyone's traffic,
received and sent) and `air_util_tx` (% of the last hour this node transmitted). The
firmware also stores its DeviceMetrics in its node DB, so the config handshake brings
the last value: the library's `nodesByNum[own]['deviceMetrics']` is the fallback until
the first report arrives. A busy phone queue can delay reports: the last one stays in
force until the next (erring on the quiet side).

The thresholds are the firmware's own (`airtime.h`: 25 % "polite", 40 % the maximum),
which gate only the node's periodic traffic (telemetry, position, NodeInfo), never a
client's texts. The bot applies them to itself:

* over `CHANNEL_UTIL_POLITE_PCT`: broadcasts wait (an admin's /bc is held in the
  outbox, within OUTBOX_TTL_S; a scheduled one is skipped with an INFO line), and a
  command on a channel is answered with one text;
* over `CHANNEL_UTIL_MAX_PCT`: DM replies only; a command on a channel is not answered
  (INFO, summarised once a minute).
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

from meshtastic import BROADCAST_NUM

from meshbot.config import Settings
from meshbot.outbox.policy import TextKind

if TYPE_CHECKING:
    from meshbot.link.owner import NodeLink

log = logging.getLogger(__name__)

_SUMMARY_EVERY_S = 60.0
_TELEMETRY_PORT = "TELEMETRY_APP"


class Level(enum.Enum):
    OPEN = "open"
    POLITE = "polite"  # over CHANNEL_UTIL_POLITE_PCT
    DM_ONLY = "DM only"  # over CHANNEL_UTIL_MAX_PCT


@dataclass(frozen=True)
class ChannelReading:
    """What the node last said about the channel."""

    channel_utilization: float  # % of the last minute the channel was busy
    air_util_tx: float  # % of the last hour the node transmitted
    at: Optional[float]  # monotonic time it arrived; None: from the node DB (age unknown)


def _metrics(telemetry: dict[str, Any]) -> Optional[tuple[float, float]]:
    """(channelUtilization, airUtilTx) from a telemetry or node DB dict, if it has them."""
    for key in ("deviceMetrics", "localStats"):
        metrics = telemetry.get(key)
        if isinstance(metrics, dict) and ("channelUtilization" in metrics or "airUtilTx" in metrics):
            # A field left out by MessageToDict is 0 (older firmware without presence).
            return float(metrics.get("channelUtilization", 0.0)), float(metrics.get("airUtilTx", 0.0))
    return None


class ChannelGovernor:
    """Reads the node's channel reports; tells the outbox and the router what may go."""

    def __init__(self, settings: Settings, link: "NodeLink", clock: Callable[[], float] = time.monotonic) -> None:
        self._polite = settings.CHANNEL_UTIL_POLITE_PCT
        self._max = settings.CHANNEL_UTIL_MAX_PCT
        self._link = link
        self._clock = clock
        self._lock = threading.Lock()
        self._reading: Optional[ChannelReading] = None
        self._level = Level.OPEN
        self._unanswered = 0  # channel commands not answered since the last summary line
        self._unanswered_since: Optional[float] = None
        self._last_summary: Optional[float] = None

    # --- input ---------------------------------------------------------------------------------
    def observe(self, packet: dict) -> None:
        """Every received packet (library thread: cheap). Keeps the own node's telemetry."""
        decoded = packet.get("decoded")
        if not isinstance(decoded, dict) or decoded.get("portnum") != _TELEMETRY_PORT:
            return
        own = self._link.status.node_num
        if own is None or packet.get("from") != own:
            return  # other nodes' telemetry describes their channel, not ours
        values = _metrics(decoded.get("telemetry") or {})
        if values is None:
            return
        with self._lock:
            self._reading = ChannelReading(values[0], values[1], self._clock())
        self.level()  # log a change of level when it happens, not when someone asks

    # --- output --------------------------------------------------------------------------------
    def reading(self) -> Optional[ChannelReading]:
        """The last report from the node, or its node DB entry's, or None."""
        with self._lock:
            if self._reading is not None:
                return self._reading
        iface = self._link.interface
        own = self._link.status.node_num
        node = ((getattr(iface, "nodesByNum", None) or {}) if iface is not None else {}).get(own) if own is not None else None
        values = _metrics(node) if isinstance(node, dict) else None
        return ChannelReading(values[0], values[1], None) if values else None

    def level(self) -> Level:
        reading = self.reading()
        util = reading.channel_utilization if reading else 0.0
        level = Level.DM_ONLY if util > self._max else Level.POLITE if util > self._polite else Level.OPEN
        unanswered = 0
        with self._lock:
            previous, self._level = self._level, level
            if level is not Level.DM_ONLY and self._unanswered_since is not None:
                # The episode is over: its count not yet logged goes out with the change.
                unanswered, self._unanswered = self._unanswered, 0
                self._unanswered_since = self._last_summary = None
        if level is not previous:
            self._log_change(previous, level, util, unanswered)
        return level

    def allows(self, to: int, kind: TextKind) -> bool:
        """May a text of this kind to `to` go on the air now?"""
        return self.permits(self.level(), to, kind)

    @staticmethod
    def permits(level: Level, to: int, kind: TextKind) -> bool:
        """May a text of this kind to `to` go on the air at this level?"""
        if level is Level.DM_ONLY:
            return to != BROADCAST_NUM
        if level is Level.POLITE:
            return kind is TextKind.REPLY
        return True

    def channel_one_text(self) -> bool:
        """A command on a channel gets one text (over CHANNEL_UTIL_POLITE_PCT)."""
        return self.level() is not Level.OPEN

    def dm_only(self) -> bool:
        return self.level() is Level.DM_ONLY

    def not_answered(self, what: str, sender: int, channel: int) -> None:
        """A channel command left unanswered (DM only): one INFO line a minute at most."""
        now = self._clock()
        with self._lock:
            self._unanswered += 1
            if self._unanswered_since is None:
                self._unanswered_since = now
            if self._last_summary is not None and now - self._last_summary < _SUMMARY_EVERY_S:
                return
            count, since = self._unanswered, self._unanswered_since
            self._unanswered, self._unanswered_since, self._last_summary = 0, now, now
            util = self._reading.channel_utilization if self._reading else None
        shown = f"{util:.0f} %" if util is not None else "over the limit"
        if count == 1:
            log.info(
                "channel utilization %s > CHANNEL_UTIL_MAX_PCT (%g %%): %s from !%08x on ch%d not answered (DM replies only)",
                shown, self._max, what, sender, channel,
            )
        else:
            log.info(
                "channel utilization %s > CHANNEL_UTIL_MAX_PCT (%g %%): %d channel commands not answered in %.0f s (DM replies only)",
                shown, self._max, count, now - (since or now),
            )

    def _log_change(self, previous: Level, level: Level, util: float, unanswered: int) -> None:
        if level is Level.DM_ONLY:
            log.info(
                "channel utilization %.0f %% > CHANNEL_UTIL_MAX_PCT (%g %%): DM replies only, channel commands not answered",
                util, self._max,
            )
        elif level is Level.POLITE:
            log.info(
                "channel utilization %.0f %% > CHANNEL_UTIL_POLITE_PCT (%g %%): broadcasts deferred, one text per channel reply",
                util, self._polite,
            )
        else:
            log.info("channel utilization %.0f %%: back under CHANNEL_UTIL_POLITE_PCT (%g %%)", util, self._polite)
        if unanswered:
            log.info("%d more channel command%s were not answered while the channel was busy", unanswered, "" if unanswered == 1 else "s")
