"""Loopback endpoints that misbehave on purpose, for the tests of network waits."""

from __future__ import annotations

import socket

import pytest


def listeners_that_never_answer(count: int = 1) -> tuple[list[socket.socket], int]:
    """`count` sockets on consecutive loopback ports (Triton's HTTP, gRPC layout when 2) that accept
    connections
    (the kernel's backlog does) and never send a byte; returns them and the first port."""
    for _ in range(50):
        sockets: list[socket.socket] = []
        try:
            first = socket.socket()
            sockets.append(first)
            first.bind(("127.0.0.1", 0))
            for offset in range(1, count):
                other = socket.socket()
                sockets.append(other)
                other.bind(("127.0.0.1", first.getsockname()[1] + offset))
        except OSError:
            for sock in sockets:
                sock.close()
            continue
        for sock in sockets:
            sock.listen(16)
        return sockets, first.getsockname()[1]
    pytest.fail("no free consecutive loopback ports")
