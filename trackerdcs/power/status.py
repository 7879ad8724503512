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
