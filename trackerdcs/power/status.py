"""The CAEN channel `Status` bit field (SY4527/SY5527), decoded as an IntFlag."""

import functools
from enum import IntFlag


class ChannelStatus(IntFlag):
    ON = 1 << 0
    RAMP_UP = 1 << 1
    RAMP_DOWN = 1 << 2
    OVC = 1 << 3  # over-current
    OVV = 1 << 4  # over-voltage
    UNV = 1 << 5  # under-voltage
    EXT_TRIP = 1 << 6
    HVMAX = 1 << 7  # hardware maximum voltage reached
    EXT_DISABLE = 1 << 8
    INT_TRIP = 1 << 9  # tripped: current over I0Set for longer than Trip
    CALIB_ERR = 1 << 10
    UNPLUGGED = 1 << 11
    UNC = 1 << 12
    OVV_PROT = 1 << 13
    POWER_FAIL = 1 << 14
    TEMP_FAIL = 1 << 15


TRIP_BITS = ChannelStatus.INT_TRIP | ChannelStatus.EXT_TRIP
FAULT_BITS = (
    ChannelStatus.OVV
    | ChannelStatus.UNV
    | ChannelStatus.EXT_DISABLE
    | ChannelStatus.CALIB_ERR
    | ChannelStatus.UNPLUGGED
    | ChannelStatus.UNC
    | ChannelStatus.OVV_PROT
    | ChannelStatus.POWER_FAIL
    | ChannelStatus.TEMP_FAIL
)


_BITS = tuple((int(flag), flag.name) for flag in ChannelStatus)


@functools.lru_cache(maxsize=1024)
def _flag_names(status: int) -> tuple[str, ...]:
    return tuple(name for bit, name in _BITS if status & bit)


def flag_names(status: int) -> list[str]:
    """Names of every set bit, lowest first (several faults can be set at once)."""
    return list(_flag_names(status))


# What each bit means, for people (the control UI explains a trip with it). CAEN's SY4527 /
# SY5527 channel status word, as decoded by caen_libs (the project's hardware reference,
# hardware.md, "Status bits").
MEANINGS: dict[str, str] = {
    "ON": "switched on",
    "RAMP_UP": "ramping up",
    "RAMP_DOWN": "ramping down",
    "OVC": "over-current: the current is at its limit (I0Set)",
    "OVV": "over-voltage: VMon above the set voltage",
    "UNV": "under-voltage: VMon below the set voltage",
    "EXT_TRIP": "external trip: switched off by the crate's trip input",
    "HVMAX": "at the board's hardware maximum voltage",
    "EXT_DISABLE": "disabled by the board's external interlock input",
    "INT_TRIP": "tripped: the current stayed over its limit (I0Set) longer than the trip time",
    "CALIB_ERR": "calibration error",
    "UNPLUGGED": "board unplugged",
    "UNC": "UNC (undocumented by CAEN)",
    "OVV_PROT": "over-voltage protection",
    "POWER_FAIL": "power fail",
    "TEMP_FAIL": "temperature fail: the board is too hot",
}
