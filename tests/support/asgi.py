"""An httpx transport that calls an ASGI app in the test's own event loop, with no socket and no server. Unlike
httpx.ASGITransport (and Litestar's test client), a response comes back as soon as its status line is sent and its
body streams as the app sends it; requests run concurrently; closing a response early tells the app its client went
away; and a body the app leaves unfinished raises httpx.RemoteProtocolError, as it does over a socket."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream
from litestar.types import ASGIApp, HTTPDisconnectEvent, HTTPRequestEvent, Message


class _Exchange:
    """One request's state, shared by the app's receive and send and by the response body the client reads."""

    def __init__(self, request: httpx.Request) -> None:
        self.request = request
        self.started = anyio.Event()
        self.gone = anyio.Event()  # the client closed the response, or the response is complete
        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.complete = False
        self.error: BaseException | None = None
        self.body_in, self.body_out = anyio.create_memory_object_stream[bytes](math.inf)
        self._request_body: AsyncIterator[bytes] | None = None
        self._request_read = False

    async def receive(self) -> HTTPRequestEvent | HTTPDisconnectEvent:
        if not self._request_read:
            if self._request_body is None:
                assert isinstance(self.request.stream, httpx.AsyncByteStream)
                self._request_body = self.request.stream.__aiter__()
            try:
                chunk = await self._request_body.__anext__()
            except StopAsyncIteration:
                self._request_read = True
                return HTTPRequestEvent(type="http.request", body=b"", more_body=False)
            return HTTPRequestEvent(type="http.request", body=chunk, more_body=True)
        await self.gone.wait()
        return HTTPDisconnectEvent(type="http.disconnect")

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            assert self.status is None, "a second response start"
            self.status = message["status"]
            self.headers = list(message.get("headers", []))
            self.started.set()
        elif message["type"] == "http.response.body":
            assert self.status is not None, "a body before the response start"
            if self.gone.is_set():
                return  # the client has gone: what is sent now goes nowhere, as over a closed socket
            body: bytes = message.get("body", b"")
            if body and self.request.method != "HEAD":
                self.body_in.send_nowait(body)
            if not message.get("more_body", False):
                self.complete = True
                self.gone.set()
                self.body_in.close()

    async def run(self, app: ASGIApp, scope: dict[str, Any]) -> None:
        try:
            await app(scope, self.receive, self.send)  # type: ignore[arg-type]
        except Exception as error:
            self.error = error
        finally:
            self.body_in.close()
            self.started.set()


class _Body(httpx.AsyncByteStream):
    def __init__(self, exchange: _Exchange, chunks: MemoryObjectReceiveStream[bytes]) -> None:
        self._exchange = exchange
        self._chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._chunks:
            yield chunk
        if not self._exchange.complete:
            raise httpx.RemoteProtocolError(
                "peer closed connection without sending complete message body (incomplete chunked read)",
                request=self._exchange.request,
            ) from self._exchange.error

    async def aclose(self) -> None:
        self._exchange.gone.set()
        self._chunks.close()


class StreamingASGITransport(httpx.AsyncBaseTransport):
    """Each request runs the app in a task of `task_group` (the client's), in this event loop."""

    def __init__(self, app: ASGIApp, task_group: TaskGroup, client: tuple[str, int] = ("127.0.0.1", 50000)) -> None:
        self._app = app
        self._task_group = task_group
        self._client = client

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": request.method,
            "headers": [(key.lower(), value) for key, value in request.headers.raw],
            "scheme": request.url.scheme,
            "path": request.url.path,
            "raw_path": request.url.raw_path.split(b"?")[0],
            "query_string": request.url.query,
            "server": (request.url.host, request.url.port or 80),
            "client": self._client,
            "root_path": "",
        }
        exchange = _Exchange(request)
        self._task_group.start_soon(exchange.run, self._app, scope)
        await exchange.started.wait()
        if exchange.status is None:
            if exchange.error is not None:
                raise exchange.error
            raise httpx.RemoteProtocolError("the app ended without a response", request=request)
        return httpx.Response(
            exchange.status, headers=exchange.headers, stream=_Body(exchange, exchange.body_out), request=request
        )
