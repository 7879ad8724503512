"""Free loopback ports for parallel test workers (`trackerdcs.stack.process.free_port`): with
TRACKERDCS_PORT_BLOCK set, ports come in turn from that block, free for TCP and UDP, never one
that is held; a malformed block is an error naming the variable. In-process."""

from __future__ import annotations

import socket

import pytest

from trackerdcs.stack.process import PORT_BLOCK_ENV, free_port, port_block


def test_ports_come_in_turn_from_the_workers_block() -> None:
    block = port_block()  # set by tests/conftest.py for this worker
    assert block is not None
    first, last = block
    ports = [free_port() for _ in range(20)]
    assert len(set(ports)) == 20
    assert all(first <= p <= last for p in ports)


def test_a_port_held_for_tcp_or_udp_is_skipped(monkeypatch) -> None:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        port = free_port()
        with socket.socket(socket.AF_INET, kind) as held:
            held.bind(("127.0.0.1", port))
            monkeypatch.setenv(PORT_BLOCK_ENV, f"{port}-{port + 1}")
            assert free_port() == port + 1 or pytest.fail("held port handed out")


def test_a_full_block_is_an_error_naming_it(monkeypatch) -> None:
    port = free_port()
    with socket.socket() as held:
        held.bind(("127.0.0.1", port))
        monkeypatch.setenv(PORT_BLOCK_ENV, f"{port - 1}-{port}")
        with socket.socket() as other:
            other.bind(("127.0.0.1", port - 1))
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
