"""The gateway's HTTP/1.1 connection handling (`headwater.gateway.server`), with a stand-in
application, over real loopback sockets: ordering, keep-alive, limits, timeouts, overload."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from headwater.gateway.server import (
    MAX_HEADER_BYTES,
    Request,
    Respond,
    Response,
    ServerState,
    connection_factory,
)

LIMIT = 1000


@dataclass
class EchoApp:
    """Answers with the path and body; can be told to wait before answering."""

    gate: asyncio.Event | None = None
    seen: list[Request] = field(default_factory=list)
    waiting: list[asyncio.Future[None]] = field(default_factory=list)
    running: int = 0
    most_running: int = 0

    def body_limit(self, method: str, path: str) -> int:
        return LIMIT

    def too_large(self, request: Request, limit: int) -> Response:
        return Response(
            400,
            [("content-type", "application/json")],
            b'{"code":"payload_too_large","message":"too large"}',
        )

    def handle(self, request: Request, respond: Respond) -> None:
        self.seen.append(request)
        if request.path == "/boom":
            raise RuntimeError("a bug")
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        if self.gate is None:
            self._answer(request, respond)
        else:  # answered later, as the log's acknowledgement would be
            self.waiting.append(asyncio.ensure_future(self._later(request, respond)))

    async def _later(self, request: Request, respond: Respond) -> None:
        assert self.gate is not None
        await self.gate.wait()
        self._answer(request, respond)

    def _answer(self, request: Request, respond: Respond) -> None:
        self.running -= 1
        respond(Response(200, [("x-path", request.path)], request.body or b"-"))


@dataclass
class Running:
    app: EchoApp
    state: ServerState
    port: int

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)


def serve(app: EchoApp, **state: float) -> Callable[[], AsyncIterator[Running]]:
    async def running() -> AsyncIterator[Running]:
        server_state = ServerState(**state)  # type: ignore[arg-type]
        loop = asyncio.get_running_loop()
        server = await loop.create_server(connection_factory(app, server_state), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            yield Running(app, server_state, port)
        finally:
            server.close()
            for conn in list(server_state.connections):
                conn.close_when_idle()

    return running


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 5)
    return status, headers, body


def run(
    test: Callable[[Running], Awaitable[None]], app: EchoApp | None = None, **state: float
) -> None:
    async def main() -> None:
        async for running in serve(app or EchoApp(), **state)():
            await asyncio.wait_for(test(running), 20)

    asyncio.run(main())


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode()
        + body
    )


def test_keep_alive_serves_many_requests_on_one_connection() -> None:
    async def test(srv: Running) -> None:
        reader, writer = await srv.connect()
        for i in range(5):
            writer.write(post(f"/p{i}", f"body{i}".encode()))
            status, headers, body = await read_response(reader)
            assert (status, headers["x-path"], body) == (200, f"/p{i}", f"body{i}".encode())
        writer.close()

    run(test)


def test_pipelined_requests_are_answered_in_order() -> None:
    async def test(srv: Running) -> None:
        reader, writer = await srv.connect()
        writer.write(b"".join(post(f"/p{i}", b"x" * i or b"-") for i in range(1, 8)))
        paths = [(await read_response(reader))[1]["x-path"] for _ in range(1, 8)]
        assert paths == [f"/p{i}" for i in range(1, 8)]
        assert srv.app.most_running == 1  # one at a time per connection
        writer.close()

    run(test)


def test_http_1_0_and_connection_close_close_after_the_answer() -> None:
    async def test(srv: Running) -> None:
        for request in (
            b"GET /a HTTP/1.0\r\n\r\n",
            b"GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ):
            reader, writer = await srv.connect()
            writer.write(request)
            status, headers, _ = await read_response(reader)
            assert status == 200 and headers["connection"] == "close"
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
            writer.close()

    run(test)


def test_chunked_bodies_are_read_whole() -> None:
    async def test(srv: Running) -> None:
        reader, writer = await srv.connect()
        writer.write(
            b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        assert (await read_response(reader))[2] == b"hello world"
        writer.close()

    run(test)


def test_a_declared_body_over_the_limit_is_refused_before_it_is_sent() -> None:
    async def test(srv: Running) -> None:
        reader, writer = await srv.connect()
        writer.write(
            f"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: {LIMIT + 1}\r\n\r\n".encode()
        )  # the body itself never comes
        status, headers, body = await read_response(reader)
        assert status == 400 and b"payload_too_large" in body
        assert headers["connection"] == "close"
        assert srv.app.seen == []
        writer.close()

    run(test)


def test_a_chunked_body_over_the_limit_is_cut_off() -> None:
    async def test(srv: Running) -> None:
        reader, writer = await srv.connect()
        chunk = b"%x\r\n%s\r\n" % (600, b"x" * 600)
        writer.write(
            b"POST /big HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk + chunk
        )
        status, _, body = await read_response(reader)
        assert status == 400 and b"payload_too_large" in body
        assert srv.app.seen == []
        writer.close()

    run(test)


def test_expect_100_continue_gets_its_interim_answer() -> None:
    async def test(srv: Running) -> None:
        reader, writer = await srv.connect()
        writer.write(
            b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        writer.write(b"abc")
        assert (await read_response(reader))[2] == b"abc"
        writer.close()

    run(test)


def test_oversized_headers_get_431() -> None:
    async def test(srv: Running) -> None:
        reader, writer = await srv.connect()
        writer.write(
            b"GET /h HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * MAX_HEADER_BYTES + b"\r\n\r\n"
        )
        status, headers, _ = await read_response(reader)
        assert status == 431 and headers["connection"] == "close"
        writer.close()

    run(test)


@pytest.mark.parametrize(
    "garbage",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
    ],
)
def test_malformed_requests_get_400_and_a_closed_connection(garbage: bytes) -> None:
    async def test(srv: Running) -> None:
        reader, writer = await srv.connect()
        writer.write(garbage)
        status, _, body = await read_response(reader)
        assert status == 400 and b"bad_request" in body
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()

    run(test)


def test_an_application_error_is_a_500_and_the_connection_lives_on() -> None:
    async def test(srv: Running) -> None:
        reader, writer = await srv.connect()
        writer.write(post("/boom", b"-") + post("/after", b"ok"))
        assert (await read_response(reader))[0] == 500
        assert (await read_response(reader))[2] == b"ok"
        writer.close()

    run(test)


def test_a_slow_client_is_cut_off() -> None:
    async def test(srv: Running) -> None:
        reader, writer = await srv.connect()
        writer.write(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        status, headers, _ = await read_response(reader)  # the rest never comes
        assert status == 408 and headers["connection"] == "close"
        writer.close()

    run(test, request_timeout=0.3)


def test_an_idle_keep_alive_connection_is_closed() -> None:
    async def test(srv: Running) -> None:
        reader, writer = await srv.connect()
        writer.write(post("/once", b"x"))
        await read_response(reader)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()

    run(test, keepalive_timeout=0.3)


def test_waiting_for_the_application_is_not_a_timeout() -> None:
    gate = asyncio.Event()

    async def test(srv: Running) -> None:
        reader, writer = await srv.connect()
        writer.write(post("/wait", b"x"))
        await asyncio.sleep(0.6)  # longer than the request timeout
        gate.set()
        assert (await read_response(reader))[0] == 200
        writer.close()

    run(test, EchoApp(gate=gate), request_timeout=0.2)


def test_a_worker_answers_at_most_max_concurrent_requests_at_a_time() -> None:
    gate = asyncio.Event()

    async def test(srv: Running) -> None:
        conns = [await srv.connect() for _ in range(6)]
        for i, (_reader, writer) in enumerate(conns):
            writer.write(post(f"/c{i}", b"x"))
        await asyncio.sleep(0.3)
        assert srv.app.running == 2  # the others wait, reading paused
        gate.set()
        statuses = [(await read_response(reader))[0] for reader, _writer in conns]
        assert statuses == [200] * 6
        assert srv.app.most_running == 2
        assert srv.state.active == 0
        for _reader, writer in conns:
            writer.close()

    run(test, EchoApp(gate=gate), max_concurrent=2)


def test_waiting_for_a_slot_is_not_a_timeout() -> None:
    gate = asyncio.Event()

    async def test(srv: Running) -> None:
        conns = [await srv.connect() for _ in range(3)]
        for i, (_reader, writer) in enumerate(conns):
            writer.write(post(f"/w{i}", b"x"))
        await asyncio.sleep(0.6)  # the third waits for a slot longer than the request timeout
        gate.set()
        assert [(await read_response(r))[0] for r, _w in conns] == [200, 200, 200]
        for _reader, writer in conns:
            writer.close()

    run(test, EchoApp(gate=gate), max_concurrent=2, request_timeout=0.2)


def test_closing_when_idle_lets_an_answer_in_progress_finish() -> None:
    gate = asyncio.Event()

    async def test(srv: Running) -> None:
        reader, writer = await srv.connect()
        writer.write(post("/last", b"x"))
        await asyncio.sleep(0.2)
        srv.state.closing = True
        for conn in list(srv.state.connections):
            conn.close_when_idle()
        gate.set()
        status, headers, _ = await read_response(reader)
        assert status == 200 and headers["connection"] == "close"
        writer.close()

    run(test, EchoApp(gate=gate))


def test_head_gets_headers_without_a_body() -> None:
    async def test(srv: Running) -> None:
        sock = socket.create_connection(("127.0.0.1", srv.port))
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n" + post("/next", b"y"))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert b"content-length: 1" in head.lower()
        assert (await read_response(reader))[2] == b"y"  # no stray body in between
        writer.close()

    run(test)
