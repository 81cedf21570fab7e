"""Running the app on uvicorn: the address is bound before the models load (a wrong --host costs
nothing), connections are bounded (how many are open, how long a client may take to send its
request line and headers), and the stop is graceful but bounded: the first SIGINT/SIGTERM starts a
drain (new requests get 503, those in flight finish) that ends by its deadline, `drain_seconds`
later, answering the requests still open with 503; a second signal ends the drain at once."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import re
import socket
import sys
import time
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from nmt.config import ServeConfig
from nmt.device import on_passing_thread
from nmt.errors import ConfigError
from nmt.inference import set_up_process
from nmt.serve.access import read_api_key
from nmt.serve.app import ServerState, create_app, load_translators
from nmt.serve.metrics import Metrics

# After the drain, how long uvicorn waits for connections to close (a client that does not read
# its answer would otherwise hold the process).
GRACE_SECONDS = 0.5
# How long a connection turned away stays open for reading after its answer (see turn_away).
LINGER_SECONDS = 1.0


def raw_response(status: int, message: str) -> bytes:
    """A whole HTTP response that closes the connection, for a client turned away before
    uvicorn has parsed its request."""
    body = json.dumps({"error": message}).encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def bounded_protocol(cfg: ServeConfig, metrics: Metrics) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (h11, or httptools when installed) with two bounds uvicorn lacks:
    a connection beyond `cfg.max_connections` is answered 503 and closed, and one that has not
    sent a complete request line and headers `cfg.header_timeout` seconds after it opened (or
    after the first byte of its next request) gets 408 and is closed. Request bodies have their
    own deadline in app.read_body."""
    base: Any = AutoHTTPProtocol
    busy = raw_response(503, f"more than {cfg.max_connections} open connections; try again")
    late = raw_response(408, f"the request headers took longer than {cfg.header_timeout:g} s")

    class BoundedProtocol(base):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self.header_timer: asyncio.TimerHandle | None = None
            self.refused = len(self.connections) > cfg.max_connections
            if self.refused:
                metrics.connection_refused("limit")
                self.turn_away(busy)
                return
            self.arm()

        def turn_away(self, response: bytes) -> None:
            """Send `response` and end the connection. The reading side stays open a moment:
            closing a socket with unread bytes resets it, and the client would lose the answer."""
            self.refused = True
            self.transport.write(response)
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(LINGER_SECONDS, self.transport.close)

        def data_received(self, data: bytes) -> None:
            if self.refused:
                return
            super().data_received(data)
            if self.in_request():
                self.disarm()
            elif self.header_timer is None and not self.transport.is_closing():
                self.arm()  # the first bytes of a next request on a kept-alive connection

        def connection_lost(self, exc: Exception | None) -> None:
            self.disarm()
            super().connection_lost(exc)

        def in_request(self) -> bool:
            return self.cycle is not None and not self.cycle.response_complete

        def arm(self) -> None:
            self.header_timer = self.loop.call_later(cfg.header_timeout, self.headers_too_late)

        def disarm(self) -> None:
            timer = getattr(self, "header_timer", None)
            if timer is not None:
                timer.cancel()
                self.header_timer = None

        def headers_too_late(self) -> None:
            self.header_timer = None
            if self.in_request() or self.transport.is_closing():
                return
            metrics.connection_refused("header_timeout")
            self.turn_away(late)

    return BoundedProtocol


class DrainingServer(uvicorn.Server):
    def __init__(
        self,
        config: uvicorn.Config,
        state: ServerState,
        drain_seconds: float,
        say: Callable[[str], None],
    ) -> None:
        super().__init__(config)
        self.state = state
        self.drain_seconds = drain_seconds
        self.say = say
        self.drain_deadline = 0.0

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        for server in self.servers:
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                host = f"[{host}]" if ":" in host else host
                self.say(f"serving on http://{host}:{port} (Ctrl-C stops)")

    def handle_exit(self, sig: int, frame: Any) -> None:
        # Unlike uvicorn's own handler, the signal is not raised again after the shutdown: a
        # drained server exits with status 0. Nor does a second signal force uvicorn's exit,
        # which cancels the requests' tasks with tracebacks: it only ends the drain now.
        now = time.monotonic()
        if self.state.draining:
            self.drain_deadline = min(self.drain_deadline, now)
            return
        self.state.draining = True
        self.drain_deadline = now + self.drain_seconds
        self.say(
            f"draining: finishing the requests in flight (for at most {self.drain_seconds:g} s), "
            "refusing new ones; a second Ctrl-C stops at once"
        )

    async def on_tick(self, counter: int) -> bool:
        if self.state.draining and not self.should_exit:
            if self.state.in_flight and time.monotonic() >= self.drain_deadline:
                self.say(f"stopping: {self.state.in_flight} request(s) still open get 503")
                self.state.abort()
                self.should_exit = True
            elif not self.state.in_flight:
                self.should_exit = True
        return await super().on_tick(counter)

    async def shutdown(self, sockets: Any = None) -> None:
        self.state.aborting = True  # a task uvicorn cancels now ends quietly (app.Guard)
        self.config.timeout_graceful_shutdown = GRACE_SECONDS  # type: ignore[assignment]
        await super().shutdown(sockets)


def bind(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for every address `host` names (as uvicorn would open them), bound now:
    a ConfigError names the flag when the address is wrong, taken or not this machine's."""
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ConfigError(f"--host {host}: not an IPv4 address") from None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"--host {host}: not an address to listen on ({reason})") from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:  # every address on the port the first one got
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise ConfigError(
            f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc})"
        ) from None
    return sockets


def is_loopback(sock: socket.socket) -> bool:
    return ipaddress.ip_address(sock.getsockname()[0]).is_loopback


def serve(
    runs: list[Path],
    cfg: ServeConfig,
    say: Callable[[str], None],
    api_key: str | None = None,
    api_key_file: Path | None = None,
) -> None:
    """Check the settings and bind the address, load the models, then serve until stopped."""
    cfg.validate()
    key = read_api_key(api_key, api_key_file)
    sockets = bind(cfg.host, cfg.port)
    if not all(map(is_loopback, sockets)) and key is None:
        say(
            f"warning: listening on {cfg.host} without an API key: anyone who reaches this port "
            "can use the models (see --api-key-file)"
        )
    set_up_process(cfg.threads)
    # Loaded on a thread that ends, so that the decoding thread's OpenMP team is the only one.
    translators = on_passing_thread(lambda: load_translators(list(runs), cfg.device, say))
    for name, translator in translators.items():
        info = translator.info()
        say(
            f"model {name}: {info['src_lang']}-{info['tgt_lang']} {info['arch']}, "
            f"{info['parameters']:,} parameters"
        )
    app = create_app(translators, cfg, key, say)
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="on",
        http=bounded_protocol(cfg, app.metrics),
    )
    DrainingServer(config, app.state, cfg.drain_seconds, say).run(sockets=sockets)
    say("stopped")
    if app.state.batcher is not None and app.state.batcher.is_decoding:
        exit_now()


def exit_now() -> None:
    """End the process at once with status 0, without the interpreter's shutdown.

    The drain's deadline can pass while the decoding thread is inside a torch call, which runs
    without the GIL. When that call returns during the interpreter's shutdown, Python ends the
    thread with pthread_exit, whose stack unwinding meets torch's C++ frames and aborts the
    process ("terminate called without an active exception", SIGABRT). The server has closed
    its sockets and answered every request by then; only the output streams need flushing."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)
