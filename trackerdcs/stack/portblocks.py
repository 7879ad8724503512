"""A block of free loopback ports for this process, claimed machine-wide.

Each test process (every pytest-xdist worker, and a run without workers) and each benchmark run
claims one block of `BLOCK_SIZE` ports with an `fcntl` lock on a file in the temp directory,
held until the process ends, and tells `trackerdcs.stack.process.free_port` through
TRACKERDCS_PORT_BLOCK, which its children inherit. So no two such processes on this machine
draw from the same ports, `free_port` hands out a block's ports in turn (the kernel's own pick
can give one number twice in a row), and no block lies in the kernel's ephemeral range
(`ip_local_port_range`), where outgoing connections take their source ports: a port stays free
between being chosen and being bound by the server it is for.
"""

from __future__ import annotations

import fcntl
import tempfile
from pathlib import Path
from typing import IO

BLOCK_SIZE = 1_000
LOWEST = 10_000  # below: well-known services' ports
EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOCKS = Path(tempfile.gettempdir()) / "trackerdcs-port-blocks"
_held: list[IO[str]] = []  # open, locked: released when this process ends


def ephemeral_range(path: Path = EPHEMERAL) -> tuple[int, int]:
    """The kernel's ephemeral port range (first, last); Linux's default when unreadable."""
    try:
        first, last = (int(x) for x in path.read_text().split())
    except (OSError, ValueError):
        return 32_768, 60_999
    return first, last


def candidate_blocks(ephemeral: tuple[int, int]) -> list[int]:
    """First ports of the blocks outside the ephemeral range: below it from LOWEST, then above."""
    low, high = ephemeral
    below = range(LOWEST, low - BLOCK_SIZE + 1, BLOCK_SIZE)
    above = range(max(high + 1, LOWEST), 65_536 - BLOCK_SIZE + 1, BLOCK_SIZE)
    return [*below, *above]


def claim_block(locks: Path = LOCKS, ephemeral: tuple[int, int] | None = None) -> str:
    """Lock the first block no other process holds; "FIRST-LAST" for TRACKERDCS_PORT_BLOCK.
    RuntimeError when every block is held (or none lies outside the ephemeral range)."""
    locks.mkdir(parents=True, exist_ok=True)
    starts = candidate_blocks(ephemeral or ephemeral_range())
    for first in starts:
        f = (locks / f"{first}.lock").open("w")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            continue
        _held.append(f)
        return f"{first}-{first + BLOCK_SIZE - 1}"
    raise RuntimeError(
        f"no free block of {BLOCK_SIZE} ports: {len(starts)} blocks outside the ephemeral "
        f"range, all held by other test or benchmark processes (locks in {locks})"
    )
