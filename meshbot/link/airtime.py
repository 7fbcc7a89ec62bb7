"""LoRa time on air of one packet, from the node's LoRa config (Semtech AN1200.13).

The outbox never sends a text sooner than the previous one's airtime: on LONG_SLOW a
200-byte text is over 8 s on air, and queuing more only fills the node's TX queue.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

# Bytes of Meshtastic header, MIC and padding around the text on air.
PACKET_OVERHEAD_BYTES = 30
_PREAMBLE_SYMBOLS = 16

# modem preset name -> (bandwidth kHz, spreading factor, coding-rate denominator),
# as the firmware's modemPresetToParams() sets them for non-wide (sub-GHz) regions.
PRESETS: dict[str, tuple[float, int, int]] = {
    "SHORT_TURBO": (500.0, 7, 5),
    "SHORT_FAST": (250.0, 7, 5),
    "SHORT_SLOW": (250.0, 8, 5),
    "MEDIUM_FAST": (250.0, 9, 5),
    "MEDIUM_SLOW": (250.0, 10, 5),
    "LONG_TURBO": (500.0, 11, 8),
    "LONG_FAST": (250.0, 11, 5),
    "LONG_MODERATE": (125.0, 11, 8),
    "LONG_SLOW": (125.0, 12, 8),
    "VERY_LONG_SLOW": (62.5, 12, 8),
}
# A preset this table does not know (newer firmware) is paced as the slowest one we
# know of it: pacing too slowly costs seconds, pacing too fast loses texts.
_UNKNOWN_PRESET = PRESETS["LONG_SLOW"]
# The firmware stores some bandwidths as rounded integers.
_BANDWIDTH_CODES = {31: 31.25, 62: 62.5, 200: 203.125, 400: 406.25, 800: 812.5, 1600: 1625.0}


@dataclass(frozen=True)
class RadioParams:
    """What the airtime depends on."""

    name: str
    bandwidth_khz: float
    spreading_factor: int
    coding_rate: int  # denominator: 5 means 4/5

    def airtime_s(self, payload_bytes: int) -> float:
        """Seconds on air for a text of `payload_bytes` bytes (explicit header, CRC on)."""
        length = payload_bytes + PACKET_OVERHEAD_BYTES
        sf = self.spreading_factor
        t_sym = (2**sf) / (self.bandwidth_khz * 1000.0)
        low_rate_optimize = 1 if t_sym >= 0.016 else 0
        cr = self.coding_rate - 4
        numerator = 8 * length - 4 * sf + 28 + 16
        n_payload = 8 + max(math.ceil(numerator / (4 * (sf - 2 * low_rate_optimize))) * (cr + 4), 0)
        return (_PREAMBLE_SYMBOLS + 4.25) * t_sym + n_payload * t_sym


def radio_params(lora: Optional[Any]) -> RadioParams:
    """RadioParams from a `Config.LoRaConfig` protobuf (None: the firmware default, LONG_FAST)."""
    if lora is None:
        return RadioParams("LONG_FAST", *PRESETS["LONG_FAST"])
    if lora.use_preset or not (lora.bandwidth and lora.spread_factor and lora.coding_rate):
        try:
            name = type(lora).ModemPreset.Name(lora.modem_preset)
        except ValueError:
            name = f"preset #{lora.modem_preset}"
        return RadioParams(name, *PRESETS.get(name, _UNKNOWN_PRESET))
    bandwidth = _BANDWIDTH_CODES.get(lora.bandwidth, float(lora.bandwidth))
    return RadioParams(
        f"custom SF{lora.spread_factor}/{bandwidth:g}kHz/4:{lora.coding_rate}",
        bandwidth,
        int(lora.spread_factor),
        int(lora.coding_rate),
    )
