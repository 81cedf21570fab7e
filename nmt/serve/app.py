"""`nmt serve`: trained models behind HTTP (Starlette on uvicorn) and the page that shows them.

POST /translate takes JSON and answers with the fields of `nmt translate --output-format jsonl`;
GET /models, /health and /metrics (Prometheus text) describe the server; GET / is the page
(nmt/serve/static/, no CDN). Decoding happens in the `Batcher`'s thread. SIGINT/SIGTERM start a
drain: new requests get 503 while those in flight finish, then the server stops.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from nmt.config import ServeConfig
from nmt.errors import ConfigError, NmtError
from nmt.serve.batcher import Batcher, QueueFull
from nmt.serve.metrics import Metrics
from nmt.serve.protocol import BadRequest, parse_translate

if TYPE_CHECKING:
    from nmt.inference import Translator

STATIC = Path(__file__).resolve().parent / "static"


@dataclass
class ServerState:
    draining: bool = False
    in_flight: int = 0


def model_name(path: Path) -> str:
    """A run directory is served under its folder name; a checkpoint file as FOLDER/FILE."""
    path = Path(path)
    return path.name if path.is_dir() else f"{path.parent.name}/{path.stem}"


def load_translators(
    runs: list[Path], device: str, log: Callable[[str], None] | None = None
) -> dict[str, Translator]:
    """Each run loaded on `device` under its `model_name`; `log` gets their warnings (a line
    truncated to the model's maximum length, ...)."""
    from nmt.inference import Translator

    names = [model_name(run) for run in runs]
    for name in names:
        if names.count(name) > 1:
            same = ", ".join(str(r) for r, n in zip(runs, names, strict=True) if n == name)
            raise ConfigError(f"{same}: two models would both be served as {name!r}; rename one")
    return {
        name: Translator.load(run, device=device, log=log)
        for name, run in zip(names, runs, strict=True)
    }


def json_response(payload: Any, status: int = 200) -> Response:
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return Response(body, status_code=status, media_type="application/json")


def error_response(status: int, message: str) -> Response:
    return json_response({"error": message}, status)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 beyond `limit` bytes (before reading it when the
    client announced its length)."""
    announced = request.headers.get("content-length", "")
    if announced.isdigit() and int(announced) > limit:
        raise BadRequest(413, f"request body of {announced} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(413, f"request body over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(translators: dict[str, Translator], cfg: ServeConfig) -> Guard:
    """The ASGI application: routes, the decoding thread (started and stopped by the lifespan)
    and the guard that counts requests and turns them away while draining."""
    if not translators:
        raise ConfigError("nmt serve: give at least one run directory")
    names = list(translators)
    state = ServerState()
    first = translators[names[0]]
    max_tokens = cfg.max_batch_tokens or first.cfg.batch_tokens
    batcher = Batcher(translators, max_tokens, cfg.max_wait_ms / 1000, cfg.max_queue)
    metrics = Metrics(lambda: batcher.queued_sentences, lambda: state.in_flight)
    batcher.metrics = metrics
    default_beam = {name: t.cfg.beam_size for name, t in translators.items()}
    models = [describe(name, t, n == 0) for n, (name, t) in enumerate(translators.items())]
    body_limit = 8 * cfg.max_chars + 65536  # JSON escapes can take 6 bytes per character

    async def translate(request: Request) -> Response:
        started = time.perf_counter()
        body = await read_body(request, body_limit)
        req = parse_translate(body, names, default_beam, cfg)
        try:
            results = await batcher.translate(req.model, req.lines, req.options)
        except QueueFull as exc:
            return error_response(503, f"server busy: {exc}")
        except NmtError as exc:  # e.g. a line longer than the model takes, with too_long=error
            return error_response(422, str(exc))
        elapsed = (time.perf_counter() - started) * 1000
        return json_response(
            {"translations": results, "model": req.model, "time_ms": round(elapsed, 2)}
        )

    async def health(request: Request) -> Response:
        return json_response({"status": "ok", "models": names})

    async def list_models(request: Request) -> Response:
        return json_response({"models": models})

    async def show_metrics(request: Request) -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    async def bad_request(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, BadRequest)
        return error_response(exc.status, exc.message)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return error_response(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")

    async def server_error(request: Request, exc: Exception) -> Response:
        # The traceback goes to the server's log (Starlette re-raises it); the client learns
        # only that the fault is ours.
        return error_response(500, "internal server error; the server log has the details")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        batcher.start()
        try:
            yield
        finally:
            batcher.stop()

    app = Starlette(
        routes=[
            Route("/", page, methods=["GET"]),
            Route("/translate", translate, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/models", list_models, methods=["GET"]),
            Route("/metrics", show_metrics, methods=["GET"]),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        exception_handlers={
            BadRequest: bad_request,
            HTTPException: http_error,
            Exception: server_error,
        },
        lifespan=lifespan,
    )
    return Guard(app, state, metrics)


def describe(name: str, translator: Translator, is_default: bool) -> dict[str, Any]:
    """What GET /models says about one model (file paths stay on the server)."""
    info = translator.info()
    return {
        "name": name,
        "src_lang": info["src_lang"],
        "tgt_lang": info["tgt_lang"],
        "arch": info["arch"],
        "parameters": info["parameters"],
        "default": is_default,
        "beam": translator.cfg.beam_size,
    }


class Guard:
    """ASGI wrapper around the app: counts requests in flight and their outcome for /metrics,
    and answers 503 once a drain has begun."""

    def __init__(self, app: Any, state: ServerState, metrics: Metrics) -> None:
        self.app = app
        self.state = state
        self.metrics = metrics

    async def __call__(
        self, scope: Any, receive: Callable[..., Any], send: Callable[..., Any]
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if self.state.draining:
            await _send_json(send, 503, {"error": "the server is shutting down"})
            self.metrics.request_done(_known(path), 503, 0.0)
            return
        started = time.perf_counter()
        status = 500
        self.state.in_flight += 1

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.state.in_flight -= 1
            self.metrics.request_done(_known(path), status, time.perf_counter() - started)


def _known(path: str) -> str:
    """The metrics label of a path: fixed routes by name, everything else as one label, so that
    a client cannot grow the label set without bound."""
    if path in ("/", "/translate", "/health", "/models", "/metrics"):
        return path
    return "/static" if path.startswith("/static/") else "other"


async def _send_json(send: Callable[..., Any], status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
