"""Hostile and slow connections against `python -m service`: what the uvicorn options it sets guarantee."""

from __future__ import annotations

import http.client
import select
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from tests.conftest import ServerProcess
from tests.support.processes import fd_count

pytestmark = pytest.mark.slow

StartServer = Callable[..., ServerProcess]
PARTIAL_HEAD = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
COMPLETE_REQUEST = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
# far longer than any deadline these tests set: how long a test waits before it calls the server stuck
BOUND = 60.0


def address(server: ServerProcess) -> tuple[str, int]:
    host, port = server.base_url.removeprefix("http://").split(":")
    return host, int(port)


@contextmanager
def connections(server: ServerProcess, count: int, first_bytes: bytes) -> Iterator[list[socket.socket]]:
    """`count` connections that each sent `first_bytes` and nothing more; all closed on the test's side after it."""
    opened = [socket.create_connection(address(server)) for _ in range(count)]
    try:
        for connection in opened:
            connection.sendall(first_bytes)
        yield opened
    finally:
        for connection in opened:
            connection.close()


def server_ends(sockets: list[socket.socket]) -> dict[socket.socket, bytes]:
    """For each socket the server closed within the bound, what it sent before closing."""
    pending, received = set(sockets), dict.fromkeys(sockets, b"")
    ended: dict[socket.socket, bytes] = {}
    deadline = time.monotonic() + BOUND
    while pending and time.monotonic() < deadline:
        readable, _, _ = select.select(list(pending), [], [], 0.5)
        for connection in readable:
            try:
                data = connection.recv(65536)
            except ConnectionResetError:
                data = b""
            received[connection] += data
            if not data:
                ended[connection] = received[connection]
                pending.discard(connection)
    return ended


def wait_for(condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + BOUND
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_connections_that_never_finish_a_request_head_are_closed(start_server: StartServer) -> None:
    server = start_server("--header-timeout", "1")
    baseline = fd_count(server.process.pid)
    # 40 trickling a head, 20 silent, 5 with one request answered and the next one's head begun (pipelined)
    with (
        connections(server, 40, PARTIAL_HEAD) as trickling,
        connections(server, 20, b"") as silent,
        connections(server, 5, COMPLETE_REQUEST + PARTIAL_HEAD) as kept_alive,
    ):
        ended = server_ends([*trickling, *silent, *kept_alive])
        assert len(ended) == 65
        # closed without an answer (as nginx does), but for the request that was complete
        assert {ended[connection] for connection in [*trickling, *silent]} == {b""}
        assert all(ended[connection].count(b"HTTP/1.1 200 ") == 1 for connection in kept_alive)
        assert wait_for(lambda: fd_count(server.process.pid) <= baseline)
    with connections(server, 1, COMPLETE_REQUEST) as (fresh,):
        fresh.settimeout(BOUND)
        assert fresh.recv(65536).startswith(b"HTTP/1.1 200 ")


def test_the_header_timeout_leaves_a_request_whose_head_arrived_alone(start_server: StartServer) -> None:
    server = start_server("--header-timeout", "1")
    body = b'{"pinned": false}'
    head = (
        b"PATCH /api/v1/models/piper-joe HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    with connections(server, 1, head + body[:5]) as (slow_body,):
        # a connection opened after that head arrived, closed at its deadline: the slow request's has passed too
        with connections(server, 1, PARTIAL_HEAD) as (later,):
            assert later in server_ends([later])
        slow_body.sendall(body[5:])
        slow_body.settimeout(BOUND)
        assert slow_body.recv(65536).startswith(b"HTTP/1.1 200 ")


def test_requests_past_max_connections_get_503_at_once(start_server: StartServer) -> None:
    server = start_server("--max-connections", "8", "--header-timeout", "600")
    with connections(server, 8, PARTIAL_HEAD):
        connection = http.client.HTTPConnection(*address(server), timeout=BOUND)
        connection.request("GET", "/healthz")
        assert connection.getresponse().status == 503
        connection.close()

    def answers() -> bool:
        connection = http.client.HTTPConnection(*address(server), timeout=BOUND)
        connection.request("GET", "/healthz")
        status = connection.getresponse().status
        connection.close()
        return status == 200

    assert wait_for(answers)  # once those connections are gone


def test_an_unfinished_head_past_max_header_bytes_is_a_400(start_server: StartServer) -> None:
    server = start_server("--max-header-bytes", "4096", "--header-timeout", "600")
    with (
        connections(server, 1, PARTIAL_HEAD + b"a" * 3000) as (within,),
        connections(server, 1, PARTIAL_HEAD + b"a" * 5000) as (past,),
    ):
        ended = server_ends([past])
        assert ended[past].startswith(b"HTTP/1.1 400 ")
        within.sendall(b"\r\n\r\n")
        within.settimeout(BOUND)
        assert within.recv(65536).startswith(b"HTTP/1.1 200 ")
