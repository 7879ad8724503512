"""Free loopback ports for parallel test processes: `trackerdcs.stack.process.free_port` with
TRACKERDCS_PORT_BLOCK set takes ports in turn from that block, free for TCP and UDP, never one
that is held, and a malformed block is an error naming the variable;
trackerdcs/stack/portblocks.py gives each test process a block of its own outside the kernel's
ephemeral range. In-process."""

from __future__ import annotations

import socket

import pytest

from trackerdcs.stack.portblocks import BLOCK_SIZE, LOWEST, candidate_blocks, claim_block
from trackerdcs.stack.process import PORT_BLOCK_ENV, _free, free_port, port_block


def free_pair() -> int:
    """A port of this process's block whose next one is free too."""
    for _ in range(100):
        port = free_port()
        if _free("127.0.0.1", port + 1):
            return port
    raise AssertionError("no two neighbouring free ports in this process's block")


def test_ports_come_in_turn_from_this_processs_block() -> None:
    block = port_block()  # claimed by tests/conftest.py
    assert block is not None
    first, last = block
    ports = [free_port() for _ in range(20)]
    assert len(set(ports)) == 20
    assert all(first <= p <= last for p in ports)


@pytest.mark.parametrize("kind", [socket.SOCK_STREAM, socket.SOCK_DGRAM])
def test_a_port_held_for_tcp_or_udp_is_skipped(monkeypatch, kind) -> None:
    port = free_pair()
    with socket.socket(socket.AF_INET, kind) as held:
        held.bind(("127.0.0.1", port))
        monkeypatch.setenv(PORT_BLOCK_ENV, f"{port}-{port + 1}")
        assert free_port() == port + 1


def test_a_full_block_is_an_error_naming_it(monkeypatch) -> None:
    port = free_pair()
    with socket.socket() as one, socket.socket() as two:
        one.bind(("127.0.0.1", port))
        two.bind(("127.0.0.1", port + 1))
        monkeypatch.setenv(PORT_BLOCK_ENV, f"{port}-{port + 1}")
        with pytest.raises(RuntimeError, match=PORT_BLOCK_ENV):
            free_port()


@pytest.mark.parametrize("text", ["x", "20000", "3000-2000", "80-90", "1-2-3", "20000-70000"])
def test_a_malformed_block_is_an_error_naming_the_variable(monkeypatch, text) -> None:
    monkeypatch.setenv(PORT_BLOCK_ENV, text)
    with pytest.raises(ValueError, match=PORT_BLOCK_ENV):
        free_port()


def test_without_a_block_the_kernel_picks(monkeypatch) -> None:
    monkeypatch.delenv(PORT_BLOCK_ENV)
    assert port_block() is None
    assert 1024 <= free_port() <= 65535


@pytest.mark.parametrize("ephemeral", [(32_768, 60_999), (15_000, 60_999), (10_000, 65_535),
                                       (40_000, 45_000)])  # fmt: skip
def test_blocks_lie_outside_the_ephemeral_range(ephemeral) -> None:
    low, high = ephemeral
    starts = candidate_blocks(ephemeral)
    for first in starts:
        last = first + BLOCK_SIZE - 1
        assert first >= LOWEST and last <= 65_535
        assert last < low or first > high, (first, last)
    assert len(set(starts)) == len(starts)
    if ephemeral == (32_768, 60_999):
        assert len(starts) == 26  # 22 below, 4 above


def test_each_process_claims_a_block_of_its_own(tmp_path) -> None:
    few = (10_000 + 2 * BLOCK_SIZE, 65_535)  # two blocks below, none above
    first, second = claim_block(tmp_path, few), claim_block(tmp_path, few)
    assert first != second  # the first stays locked while this process lives
    with pytest.raises(RuntimeError, match="all held by other test or benchmark processes"):
        claim_block(tmp_path, few)
