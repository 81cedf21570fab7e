"""Starting a real `nmt serve` on a free loopback port, and calling it over HTTP (stdlib only)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

START_TIMEOUT = 90.0  # loading torch and the models on a busy two-core machine
REQUEST_TIMEOUT = 60.0


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def data(self) -> Any:
        return json.loads(self.body.decode("utf-8"))


def call(url: str, body: bytes | dict[str, Any] | None = None, method: str | None = None) -> Reply:
    """One HTTP request; a dict body is sent as JSON. 4xx/5xx are returned, not raised."""
    if isinstance(body, dict):
        body = json.dumps(body).encode("utf-8")
    request = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
            return Reply(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as error:
        return Reply(error.code, dict(error.headers), error.read())


@dataclass
class Server:
    """`nmt serve RUNS --port 0 ARGS` in a child process; `url` once it listens."""

    runs: list[Path]
    args: list[str] = field(default_factory=list)
    url: str = ""
    log: list[str] = field(default_factory=list)
    process: subprocess.Popen[str] | None = None

    def start(self) -> Server:
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        command = [sys.executable, "-m", "nmt.cli", "serve", *map(str, self.runs), "--port", "0"]
        self.process = subprocess.Popen(
            command + self.args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=Path(__file__).resolve().parents[2],
        )
        found = threading.Event()
        threading.Thread(target=self._read_log, args=(found,), daemon=True).start()
        if not found.wait(START_TIMEOUT) or not self.url:
            self.kill()
            raise RuntimeError("nmt serve did not start:\n" + "\n".join(self.log))
        return self

    def _read_log(self, found: threading.Event) -> None:
        assert self.process is not None and self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line.rstrip("\n"))
            address = re.search(r"serving on (http://127\.0\.0\.1:\d+)", line)
            if address:
                self.url = address.group(1)
                found.set()
        found.set()  # the process ended

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait; the exit status (killed after `timeout`: -9)."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def wait_for(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.log):
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not in the server log:\n" + "\n".join(self.log))
            time.sleep(0.05)


# ---- raw HTTP: what a hostile client sends, byte for byte --------------------------------------


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def connect(url: str, timeout: float = REQUEST_TIMEOUT) -> socket.socket:
    return socket.create_connection(address(url), timeout=timeout)


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def exchange(url: str, data: bytes) -> bytes:
    """Send `data` on a new connection and return all the server answers before it closes."""
    with connect(url) as sock:
        sock.sendall(data)
        return read_all(sock)


def status_of(response: bytes) -> int:
    """The status code of a raw HTTP response (0 when there is none)."""
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", response)
    return int(match.group(1)) if match else 0


def body_of(response: bytes) -> Any:
    return json.loads(response.split(b"\r\n\r\n", 1)[1])


def request_bytes(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    """An HTTP/1.1 request that asks the server to close the connection after answering."""
    lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@contextlib.contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """The ASGI `app` on uvicorn in a thread of this process, on a free loopback port (for tests
    that patch the app first); yields its URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    running = uvicorn.Server(uvicorn.Config(app, log_level="critical", lifespan="on"))
    thread = threading.Thread(target=running.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not running.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        running.should_exit = True
        thread.join(30)
