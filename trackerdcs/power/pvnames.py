"""CAEN SY4527/SY5527 Channel Access PV names: `<SYSNAME>:<SS>:<CCC>:<Param>`."""


def channel_pv(system: str, board: int, channel: int, param: str) -> str:
    """PV of one channel parameter, slot padded to 2 digits and channel to 3."""
    return f"{system}:{board:02d}:{channel:03d}:{param}"


def board_pv(system: str, board: int, param: str) -> str:
    """PV of a board parameter, e.g. `BdStatus`: `<SYSNAME>:<SS>:<Param>`."""
    return f"{system}:{board:02d}:{param}"


def system_pv(system: str, param: str) -> str:
    """PV of a crate-level parameter, e.g. `ClearAlarm`."""
    return f"{system}:{param}"
