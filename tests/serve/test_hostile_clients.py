"""`nmt serve` against hostile clients, over raw sockets on 127.0.0.1: foreign Host and Origin
headers, a form's content type, a missing API key, slow and disconnecting senders, work left
behind by clients that went away, huge JSON numbers, bad settings, and SIGTERM with slow clients
and a hung request. Each attack gets its documented answer, the log holds no traceback, and the
server goes on serving."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from serve_support import (
    Server,
    address,
    body_of,
    call,
    connect,
    exchange,
    read_all,
    request_bytes,
    serve_in_thread,
    status_of,
)
from typer.testing import CliRunner

from nmt.cli import app

KEY = "s3cret-key-for-tests"
JSON = {"Content-Type": "application/json"}
TEXT = b'{"text": ["ba ce do"]}'


def host_of(url: str) -> str:
    return url.removeprefix("http://")


def post(url: str, headers: dict[str, str], body: bytes = TEXT) -> bytes:
    return exchange(url, request_bytes("POST", "/translate", headers, body))


def get(url: str, path: str, headers: dict[str, str]) -> bytes:
    return exchange(url, request_bytes("GET", path, headers))


def metric(url: str, name: str, headers: dict[str, str]) -> float:
    text = get(url, "/metrics", headers).split(b"\r\n\r\n", 1)[1].decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def still_serving(server: Server, headers: dict[str, str]) -> None:
    """A translation is answered and the log holds no traceback."""
    answer = post(server.url, {"Host": host_of(server.url), **JSON, **headers})
    assert status_of(answer) == 200, answer
    assert body_of(answer)["translations"][0]["tokens"][-1] == "</s>"
    assert not [line for line in server.log if "Traceback" in line], server.log


# ---- 7. Host, Origin, content type (the default server: no key) ----------------------------------


@pytest.mark.parametrize(
    ("headers", "status", "needle"),
    [
        ({"Host": "evil.example:8080"}, 400, "Host 'evil.example:8080' is not a name"),
        ({"Host": "127.0.0.1.nip.io"}, 400, "is not a name of this server"),
        ({"Origin": "http://evil.example"}, 403, "cross-origin request from 'http://evil.example'"),
        ({"Origin": "null"}, 403, "cross-origin request from 'null'"),
        ({"Content-Type": "text/plain"}, 415, "Content-Type: application/json, not 'text/plain'"),
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "application/json"),
    ],
    ids=["rebinding host", "foreign name", "foreign origin", "null origin", "text/plain", "form"],
)
def test_foreign_requests_are_refused(
    server: Server, headers: dict[str, str], status: int, needle: str
) -> None:
    sent = {"Host": host_of(server.url), **JSON, **headers}
    answer = post(server.url, sent)
    assert status_of(answer) == status, answer
    assert needle in body_of(answer)["error"]
    still_serving(server, {})


def test_the_pages_own_origin_and_loopback_names_are_answered(server: Server) -> None:
    port = address(server.url)[1]
    for host in (host_of(server.url), f"localhost:{port}", f"[::1]:{port}", "LOCALHOST."):
        origin = {"Origin": f"http://{host}"} if host[0].isdigit() else {}
        answer = post(server.url, {"Host": host, **JSON, **origin})
        assert status_of(answer) == 200, (host, answer)


def test_a_request_without_host_is_refused(server: Server) -> None:
    answer = exchange(server.url, b"GET /health HTTP/1.0\r\n\r\n")
    assert status_of(answer) == 400 and body_of(answer) == {"error": "missing Host header"}


# ---- 12. a JSON integer of thousands of digits ---------------------------------------------------


def test_a_huge_json_integer_is_a_400(server: Server) -> None:
    body = b'{"text": "ba", "beam": ' + b"9" * 5000 + b"}"
    answer = post(server.url, {"Host": host_of(server.url), **JSON}, body)
    assert status_of(answer) == 400
    assert body_of(answer) == {"error": "malformed JSON: a number of more than 4,300 digits"}
    body = b'{"text": "ba", "nbest": -' + b"9" * 4000 + b"}"  # parsed, out of range: not echoed
    answer = post(server.url, {"Host": host_of(server.url), **JSON}, body)
    assert status_of(answer) == 422
    assert body_of(answer) == {"error": "'nbest' is a number of 4000 digits; expected 1 to 3"}
    still_serving(server, {})


# ---- a server with an API key, short timeouts, few connections and a long batching wait ---------


@pytest.fixture(scope="module")
def guarded(served_runs: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`nmt serve` with an API key, 1 s for headers and for a body, 8 connections at most, and
    a 1 s batching wait (so that a request stays queued long enough for its client to leave)."""
    key_file = tmp_path_factory.mktemp("key") / "key.txt"
    key_file.write_text(KEY + "\n")
    args = ["--api-key-file", key_file, "--header-timeout", "1", "--body-timeout", "1",
            "--max-connections", "8", "--max-wait-ms", "1000"]  # fmt: skip
    running = Server(served_runs[:1], [str(a) for a in args]).start()
    yield running
    assert running.stop() == 0
    assert not [line for line in running.log if "Traceback" in line], running.log


def authorized(server: Server) -> dict[str, str]:
    return {"Host": host_of(server.url), "Authorization": f"Bearer {KEY}"}


@pytest.mark.parametrize("given", [None, "Bearer wrong", f"Basic {KEY}", f"Bearer {KEY}x"])
def test_the_api_key_is_required(guarded: Server, given: str | None) -> None:
    headers = {"Host": host_of(guarded.url), **JSON}
    if given is not None:
        headers["Authorization"] = given
    for answer in (post(guarded.url, headers), get(guarded.url, "/models", headers)):
        assert status_of(answer) == 401, answer
        assert "API key" in body_of(answer)["error"]
    assert status_of(get(guarded.url, "/health", headers)) == 200  # for load balancers
    assert status_of(get(guarded.url, "/", headers)) == 200  # the page asks for the key
    still_serving(guarded, authorized(guarded))


# ---- 8. slow senders: header and body timeouts, a connection limit -------------------------------


def test_slow_headers_are_cut_off_and_connections_are_bounded(guarded: Server) -> None:
    slow = [connect(guarded.url) for _ in range(8)]
    for sock in slow:
        sock.sendall(b"POST /translate HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the rest
    time.sleep(0.2)
    started = time.monotonic()
    extra = exchange(guarded.url, request_bytes("GET", "/health", authorized(guarded)))
    assert status_of(extra) == 503 and "open connections" in body_of(extra)["error"]
    for sock in slow:  # each is answered 408 and closed about a second after it opened
        answer = read_all(sock)
        assert status_of(answer) == 408, answer
        assert "request headers took longer than 1 s" in body_of(answer)["error"]
        sock.close()
    assert time.monotonic() - started < 5
    refused = 'nmt_connections_refused_total{reason="%s"}'
    assert metric(guarded.url, refused % "limit", authorized(guarded)) == 1
    assert metric(guarded.url, refused % "header_timeout", authorized(guarded)) == 8
    still_serving(guarded, authorized(guarded))


def test_a_slow_body_gets_408(guarded: Server) -> None:
    headers = {**authorized(guarded), **JSON, "Content-Length": "100"}
    head = request_bytes("POST", "/translate", headers).replace(b"Content-Length: 0\r\n", b"")
    with connect(guarded.url) as sock:
        sock.sendall(head + b'{"text": "ba')  # 12 of the 100 bytes announced
        started = time.monotonic()
        answer = read_all(sock)
    assert status_of(answer) == 408 and "request body took longer than 1 s" in str(answer)
    assert time.monotonic() - started < 4
    still_serving(guarded, authorized(guarded))


# ---- 13. a client that leaves mid-body: one quiet line, counted apart ----------------------------


def test_a_client_leaving_mid_body_is_one_quiet_line(guarded: Server) -> None:
    headers = {**authorized(guarded), **JSON, "Content-Length": "100"}
    head = request_bytes("POST", "/translate", headers).replace(b"Content-Length: 0\r\n", b"")
    for _ in range(3):
        with connect(guarded.url) as sock:
            sock.sendall(head + b'{"text": ')
            time.sleep(0.1)
    deadline = time.monotonic() + 30
    while len(gone := [line for line in guarded.log if "left while sending" in line]) < 3:
        assert time.monotonic() < deadline, guarded.log
        time.sleep(0.05)
    assert all(line.startswith("127.0.0.1:") for line in gone) and len(gone) == 3
    text = get(guarded.url, "/metrics", authorized(guarded)).decode()
    assert 'nmt_client_gone_total{path="/translate",stage="sending"} 3' in text
    assert 'path="/translate",code="500"' not in text
    still_serving(guarded, authorized(guarded))


# ---- 9. work of a client that left is not decoded ------------------------------------------------


def test_queued_work_of_a_client_that_left_is_dropped(guarded: Server) -> None:
    # A call of 9 sentences first: the worker then waits its whole 1 s for 9 before taking 8.
    assert status_of(post(guarded.url, {**authorized(guarded), **JSON},
                          json.dumps({"text": ["ce"] * 9}).encode())) == 200  # fmt: skip
    name = 'nmt_sentences_total{model="tiny-transformer"}'
    before = metric(guarded.url, name, authorized(guarded))
    heavy = b'{"text": [' + b", ".join([b'"ha ke lo ba do fe ga lo ba ke"'] * 8) + b"]}"
    with connect(guarded.url) as sock:  # queued for the 1 s batching wait, then gone
        sock.sendall(request_bytes("POST", "/translate", {**authorized(guarded), **JSON}, heavy))
        deadline = time.monotonic() + 30
        while metric(guarded.url, "nmt_queue_sentences", authorized(guarded)) != 8:
            assert time.monotonic() < deadline, "the request was never queued"
            time.sleep(0.02)
    guarded.wait_for("left before its 8 sentence(s) were decoded")
    time.sleep(1.5)  # past the batching wait: the job would have been decoded by now
    assert metric(guarded.url, name, authorized(guarded)) == before
    text = get(guarded.url, "/metrics", authorized(guarded)).decode()
    assert 'nmt_client_gone_total{path="/translate",stage="waiting"} 1' in text
    assert "nmt_queue_sentences 0" in text
    still_serving(guarded, authorized(guarded))
    assert metric(guarded.url, name, authorized(guarded)) == before + 1


# ---- 10. SIGTERM with slow clients and a hung request: the drain ends by its deadline ------------

DRAIN = 2.0


@pytest.mark.parametrize("signals", [1, 2], ids=["one signal", "a second signal"])
def test_sigterm_drain_ends_by_its_deadline(served_runs: list[Path], signals: int) -> None:
    # A 60 s batching wait makes a queued request hang; slow clients hold their connections.
    args = ["--drain-seconds", str(DRAIN), "--max-wait-ms", "60000", "--header-timeout", "60",
            "--body-timeout", "60"]  # fmt: skip
    running = Server(served_runs[:1], args).start()
    try:
        host = {"Host": host_of(running.url)}
        slow_head = connect(running.url)
        slow_head.sendall(b"POST /translate HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        slow_body = connect(running.url)
        head = request_bytes("POST", "/translate", {**host, **JSON, "Content-Length": "100"})
        slow_body.sendall(head.replace(b"Content-Length: 0\r\n", b"") + b"{")
        hung = connect(running.url)
        hung.sendall(request_bytes("POST", "/translate", {**host, **JSON}, TEXT))
        deadline = time.monotonic() + 10
        while "nmt_in_flight_requests 3" not in get(running.url, "/metrics", host).decode():
            assert time.monotonic() < deadline, "the requests never arrived"
            time.sleep(0.05)
        assert running.process is not None
        started = time.monotonic()
        running.process.send_signal(signal.SIGTERM)
        if signals == 2:
            running.wait_for("draining")
            running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(DRAIN + 10) == 0
        took = time.monotonic() - started
        assert took < (1.5 if signals == 2 else DRAIN + 2), took
        for sock in (hung, slow_body):
            answer = read_all(sock)
            assert status_of(answer) == 503, answer
            assert body_of(answer) == {"error": "the server stopped before answering"}
        assert read_all(slow_head) == b""  # closed unanswered: it never sent a request
        running.wait_for("stopped")
        assert not [line for line in running.log if "Traceback" in line or "Cancelled" in line]
    finally:
        running.kill()


def test_the_drain_deadline_during_a_long_batch_ends_the_process_cleanly(
    served_runs: list[Path],
) -> None:
    """The deadline passes while the decoding thread is inside a torch call: the server exits 0
    at once, never with SIGABRT ("terminate called without an active exception"), which is what
    the interpreter's shutdown under a thread in torch ends in."""
    running = Server(served_runs[:1], ["--drain-seconds", "0", "--max-sentences", "256",
                                       "--max-chars", "100000"]).start()  # fmt: skip
    try:
        host = {"Host": host_of(running.url)}
        line = " ".join(["ba ce do fe ga"] * 6)
        body = json.dumps({"text": [line] * 256, "beam": 16, "attention_detail": True}).encode()
        busy = connect(running.url)
        busy.sendall(request_bytes("POST", "/translate", {**host, **JSON}, body))
        deadline = time.monotonic() + 30
        while metric(running.url, 'nmt_sentences_total{model="tiny-transformer"}', host) < 256:
            assert time.monotonic() < deadline, "the batch never started"
            time.sleep(0.02)
        assert running.process is not None
        started = time.monotonic()
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(30) == 0, running.log
        assert time.monotonic() - started < 3  # the deadline (0 s) plus 2 s, and a second to spare
        assert status_of(read_all(busy)) == 503
        running.wait_for("stopped")
        assert not [line for line in running.log if "terminate" in line or "Traceback" in line]
    finally:
        running.kill()


# ---- 11, 14. settings checked, and the address bound, before the models load --------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--max-wait-ms", "1e300"], "--max-wait-ms 1e+300: expected 0 to 60000"),
        (["--max-wait-ms", "nan"], "expected a finite number, got nan"),
        (["--drain-seconds", "-1"], "--drain-seconds -1: expected 0 to 3600"),
        (["--header-timeout", "0"], "--header-timeout 0: expected 0.01 to 3600"),
        (["--max-connections", "0"], "--max-connections 0: expected 1 to 100000"),
        (["--allow-origin", "evil.example"], "expected scheme://host[:port]"),
        (["--api-key", ""], "the API key is empty"),
        (["--host", "999.1.1.1"], "--host 999.1.1.1: not an IPv4 address"),
        (["--host", "10.255.255.254"], "--host 10.255.255.254 --port 0: cannot listen there"),
    ],
    ids=[
        "wait 1e300",
        "wait nan",
        "drain",
        "header timeout",
        "connections",
        "origin",
        "key",
        "host 999.1.1.1",
        "host not ours",
    ],  # fmt: skip
)
def test_bad_settings_are_refused_before_the_models_load(
    served_runs: list[Path], args: list[str], needle: str
) -> None:
    result = CliRunner().invoke(app, ["serve", str(served_runs[0]), "--port", "0", *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert lines == [lines[-1]] and lines[0].startswith("error: ") and needle in lines[0], lines
    assert "Traceback" not in result.output


def test_a_port_in_use_is_refused_before_the_models_load(served_runs: list[Path]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(app, ["serve", str(served_runs[0]), "--port", str(port)])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (
        f"error: --host 127.0.0.1 --port {port}: cannot listen there (Address already in use)"
    )


@pytest.fixture
def dead_decoder(served_runs: list[Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The app in this process (uvicorn in a thread) whose decoding thread dies at its start, as
    the one with a 1e300 ms wait did before that setting was checked."""
    from nmt.config import ServeConfig
    from nmt.serve.app import create_app, load_translators
    from nmt.serve.batcher import Batcher

    def broken(self: Any) -> None:
        raise OverflowError("timeout value is too large")

    monkeypatch.setattr(Batcher, "_serve", broken)
    monkeypatch.setattr(threading, "excepthook", lambda args: None)  # the traceback, unprinted
    with serve_in_thread(
        create_app(load_translators(served_runs[:1], "cpu"), ServeConfig())
    ) as url:
        yield url


def test_health_reports_a_dead_decoder_and_requests_do_not_hang(dead_decoder: str) -> None:
    health = call(dead_decoder + "/health")
    assert health.status == 503
    assert health.data["decoder"] == "stopped (OverflowError: timeout value is too large)"
    started = time.monotonic()
    reply = call(dead_decoder + "/translate", {"text": "ba ce"})
    assert reply.status == 503 and "the decoder has stopped" in reply.data["error"]
    assert time.monotonic() - started < 5


# ---- a model whose scores are not finite: a 500 that says so, no NaN in JSON, no traceback -------


def test_non_finite_scores_are_a_500_that_says_so(served_runs: list[Path], tmp_path: Path) -> None:
    import shutil

    import torch

    from nmt.config import ServeConfig
    from nmt.serve.app import create_app, load_translators

    run = tmp_path / "tiny-transformer"
    shutil.copytree(served_runs[0], run)
    payload = torch.load(run / "best.pt", weights_only=True)
    payload["model"]["output.weight"] = payload["model"]["output.weight"] * 1e37  # overflows
    torch.save(payload, run / "best.pt")
    with serve_in_thread(create_app(load_translators([run], "cpu"), ServeConfig())) as url:
        for beam in (1, 3):
            reply = call(url + "/translate", {"text": ["ba ce", "fo"], "beam": beam})
            assert reply.status == 500, reply.body
            assert reply.data == {"error": "model tiny-transformer: the model's scores are NaN "
                                  "or infinite (fp32); its weights are damaged or overflow at "
                                  "this precision"}  # fmt: skip
        assert call(url + "/health").status == 200
