"""`headwater up`'s gateway: one listening socket, one worker process per core.

The parent binds the socket and forks the workers (pre-fork, as gunicorn does); each worker runs
an event loop (uvloop when installed) serving the gateway on the shared socket, and the kernel
hands each new connection to one of them. The parent restarts a worker that dies, and on
SIGINT/SIGTERM asks every worker to finish what it is answering and stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import time
from multiprocessing.process import BaseProcess

from headwater.config import Config
from headwater.gateway.app import GatewayApp
from headwater.gateway.server import ServerState, connection_factory
from headwater.paths import DataPaths

log = logging.getLogger(__name__)

SHUTDOWN_GRACE = 10.0
RESPAWN_DELAY = 1.0


class PortInUse(Exception):
    """Another process listens on the requested address."""


def listen(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """The gateway's listening socket (refuses a port something else already serves)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise PortInUse(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def serve_gateway(config: Config, paths: DataPaths, sock: socket.socket, workers: int) -> None:
    """Run `workers` gateway processes on `sock` until SIGINT or SIGTERM."""
    context = multiprocessing.get_context("fork")
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}

    def spawn(number: int) -> BaseProcess:
        proc = context.Process(target=_worker, args=(config, paths, sock), name=f"worker-{number}")
        proc.start()
        return proc

    procs = {n: spawn(n) for n in range(workers)}
    started = dict.fromkeys(procs, time.monotonic())
    try:
        while not stopping:
            multiprocessing.connection.wait([p.sentinel for p in procs.values()], timeout=0.5)
            for number, proc in list(procs.items()):
                if proc.is_alive() or stopping:
                    continue
                log.error(
                    "gateway worker %d exited with code %s; restarting it", number, proc.exitcode
                )
                if time.monotonic() - started[number] < RESPAWN_DELAY:
                    time.sleep(RESPAWN_DELAY)
                procs[number] = spawn(number)
                started[number] = time.monotonic()
    finally:
        for proc in procs.values():
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + SHUTDOWN_GRACE + 5
        for proc in procs.values():
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join()
        sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _worker(config: Config, paths: DataPaths, sock: socket.socket) -> None:
    """One gateway worker process."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    loop: asyncio.AbstractEventLoop
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(_serve(config, paths, sock))
    finally:
        loop.close()


async def _serve(config: Config, paths: DataPaths, sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopped.set)
    app = GatewayApp(config, paths)
    app.start(loop, on_orphaned=stopped.set)
    state = ServerState(max_concurrent=config.gateway.max_concurrent_requests)
    server = await loop.create_server(connection_factory(app, state), sock=sock)
    try:
        await stopped.wait()
    finally:
        # The process must end whatever happens below (a stuck client, a stuck log server).
        loop.call_later(SHUTDOWN_GRACE + 5, os._exit, 1)
        server.close()  # no new connections; answer what is in progress, then close
        state.closing = True
        for conn in list(state.connections):
            conn.close_when_idle()
        deadline = loop.time() + SHUTDOWN_GRACE
        while state.connections and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(state.connections):  # out of time: what is left is dropped
            conn.abort()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1.0)
        app.close()
