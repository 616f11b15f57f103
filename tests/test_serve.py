"""``shopper.serve``: how the web processes share the port."""

from __future__ import annotations

import socket

import pytest

from shopper.serve import listening_sockets


def test_each_worker_gets_its_own_socket_on_one_port():
    sockets = listening_sockets("127.0.0.1", 0, 1)  # port 0: any free port, then reuse it
    port = sockets[0].getsockname()[1]
    for s in sockets:
        s.close()
    sockets = listening_sockets("127.0.0.1", port, 3)
    try:
        assert len({s.fileno() for s in sockets}) == 3
        assert {s.getsockname()[1] for s in sockets} == {port}
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        client.close()
    finally:
        for s in sockets:
            s.close()


@pytest.mark.parametrize("reuse_port", [False, True])
def test_a_port_someone_listens_on_is_refused_not_shared(reuse_port):
    other = socket.socket()
    other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:  # e.g. a stale shopper.serve still running
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    other.bind(("127.0.0.1", 0))
    other.listen()
    try:
        with pytest.raises(OSError):
            listening_sockets("127.0.0.1", other.getsockname()[1], 2)
    finally:
        other.close()
