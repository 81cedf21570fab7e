"""`nmt serve`: trained models behind HTTP (Starlette on uvicorn) and the page that shows them.

POST /translate takes JSON and answers with the fields of `nmt translate --output-format jsonl`;
GET /models, /health and /metrics (Prometheus text) describe the server; GET / is the page
(nmt/serve/static/, no CDN). Decoding happens in the `Batcher`'s thread. Requests from foreign
hosts, origins or without the API key are turned away first (access.py). SIGINT/SIGTERM start a
drain: new requests get 503 while those in flight finish, until the drain's deadline, when those
still open are answered 503 and the server stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from nmt.config import ServeConfig
from nmt.decoding.alignment import parse_pharaoh
from nmt.errors import ConfigError, NmtError
from nmt.inference import NonFiniteScores, Translator
from nmt.markup.document import translate_document as translate_markup
from nmt.markup.inline import Aligned
from nmt.serve.access import AccessPolicy
from nmt.serve.batcher import Batcher, DecoderStopped, QueueFull
from nmt.serve.metrics import Metrics
from nmt.serve.protocol import BadRequest, TranslateRequest, parse_translate

STATIC = Path(__file__).resolve().parent / "static"


@dataclass
class ServerState:
    draining: bool = False
    in_flight: int = 0
    aborting: bool = False  # the drain's deadline passed: requests still open are cut short
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)  # the requests in flight
    batcher: Batcher | None = None  # the decoding thread's owner

    def abort(self) -> None:
        """Answer every request still in flight with 503 now (`Guard` catches the cancel)."""
        self.aborting = True
        for task in list(self.tasks):
            task.cancel()


class ClientGone(Exception):
    """The client closed its connection in the middle of its request body."""

    def __init__(self, received: int) -> None:
        super().__init__(f"{received} bytes received")
        self.received = received


class NoAnswer(Response):
    """The response for a client that has gone: nothing is sent (and nothing counted as
    answered: `Guard` sees no status)."""

    async def __call__(
        self, scope: Any, receive: Callable[..., Any], send: Callable[..., Any]
    ) -> None:
        return None


def model_name(path: Path) -> str:
    """A run directory is served under its folder name; a checkpoint file as FOLDER/FILE."""
    path = Path(path)
    return path.name if path.is_dir() else f"{path.parent.name}/{path.stem}"


def load_translators(
    runs: list[Path], device: str, log: Callable[[str], None] | None = None
) -> dict[str, Translator]:
    """Each run loaded on `device` under its `model_name`; `log` gets their warnings (a line
    truncated to the model's maximum length, ...)."""
    names = [model_name(run) for run in runs]
    for name in names:
        if names.count(name) > 1:
            same = ", ".join(str(r) for r, n in zip(runs, names, strict=True) if n == name)
            raise ConfigError(f"{same}: two models would both be served as {name!r}; rename one")
    return {
        name: Translator.load(run, device=device, log=log)
        for name, run in zip(names, runs, strict=True)
    }


def json_response(payload: Any, status: int = 200, close: bool = False) -> Response:
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    headers = {"connection": "close"} if close else None
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def error_response(status: int, message: str, close: bool = False) -> Response:
    return json_response({"error": message}, status, close)


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The request body, refused with 413 beyond `limit` bytes (before reading it when the
    client announced its length) and with 408 when it takes longer than `timeout` seconds.
    ClientGone when the client leaves half-way."""
    announced = request.headers.get("content-length", "")
    if announced.isdigit() and int(announced) > limit:
        raise BadRequest(413, f"request body of {announced} bytes; the limit is {limit}")
    chunks: list[bytes] = []

    async def collect() -> None:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BadRequest(413, f"request body over the limit of {limit} bytes")
            chunks.append(chunk)

    try:
        await asyncio.wait_for(collect(), timeout)
    except asyncio.TimeoutError:
        raise BadRequest(408, f"the request body took longer than {timeout:g} s") from None
    except ClientDisconnect:
        raise ClientGone(sum(map(len, chunks))) from None
    return b"".join(chunks)


async def wait_for_disconnect(request: Request) -> None:
    """Return once the client has closed its connection (its body having been read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def create_app(
    translators: dict[str, Translator],
    cfg: ServeConfig,
    api_key: str | None = None,
    log: Callable[[str], None] | None = None,
) -> Guard:
    """The ASGI application: routes, the decoding thread (started and stopped by the lifespan)
    and the guard that refuses foreign requests, counts the others and turns them away while
    draining. `log` gets one line per client that left before its answer."""
    if not translators:
        raise ConfigError("nmt serve: give at least one run directory")
    cfg.validate()
    state = ServerState()
    first = next(iter(translators.values()))
    max_tokens = cfg.max_batch_tokens or first.cfg.batch_tokens
    batcher = Batcher(translators, max_tokens, cfg.max_wait_ms / 1000, cfg.max_queue)
    state.batcher = batcher
    metrics = Metrics(lambda: batcher.queued_sentences, lambda: state.in_flight)
    batcher.metrics = metrics
    endpoints = Endpoints(translators, cfg, batcher, metrics, log or (lambda message: None))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        batcher.start()
        try:
            yield
        finally:
            # After a drain, whatever is still queued has no client left to answer.
            batcher.stop(timeout=STOP_SECONDS if state.draining else None)

    app = Starlette(
        routes=[
            Route("/", endpoints.page, methods=["GET"]),
            Route("/translate", endpoints.translate, methods=["POST"]),
            Route("/health", endpoints.health, methods=["GET"]),
            Route("/models", endpoints.list_models, methods=["GET"]),
            Route("/metrics", endpoints.show_metrics, methods=["GET"]),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        exception_handlers={
            BadRequest: bad_request,
            HTTPException: http_error,
            Exception: server_error,
        },
        lifespan=lifespan,
    )
    inner: Any = app
    if cfg.allow_origins:  # the pages of those origins may read the answers (CORS headers)
        inner = CORSMiddleware(app, allow_origins=list(cfg.allow_origins),
                               allow_methods=["GET", "POST"],
                               allow_headers=["content-type", "authorization"])  # fmt: skip
    return Guard(inner, state, metrics, AccessPolicy(cfg, api_key))


class Endpoints:
    """The app's request handlers, around the batcher and the settings they share."""

    def __init__(
        self,
        translators: dict[str, Translator],
        cfg: ServeConfig,
        batcher: Batcher,
        metrics: Metrics,
        say: Callable[[str], None],
    ) -> None:
        self.cfg = cfg
        self.batcher = batcher
        self.metrics = metrics
        self.say = say
        self.names = list(translators)
        self.default_beam = {name: t.cfg.beam_size for name, t in translators.items()}
        self.models = [describe(name, t, n == 0) for n, (name, t) in enumerate(translators.items())]
        self.body_limit = 8 * cfg.max_chars + 65536  # JSON escapes can take 6 bytes per character

    def gone(self, request: Request, stage: str, detail: str) -> Response:
        client = request.client
        who = f"{client.host}:{client.port}" if client else "a client"
        self.say(f"{who} left {detail}")
        self.metrics.client_gone("/translate", stage)
        return NoAnswer()

    async def translate(self, request: Request) -> Response:
        started = time.perf_counter()
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            raise BadRequest(415, f"send the body as Content-Type: application/json, not {kind!r}")
        try:
            body = await read_body(request, self.body_limit, self.cfg.body_timeout)
        except ClientGone as exc:
            return self.gone(
                request, "sending", f"while sending its request ({exc.received:,} bytes)"
            )
        req = parse_translate(body, self.names, self.default_beam, self.cfg)
        if req.document is not None:
            return await self.translate_document_request(req, started)
        try:
            job = self.batcher.submit(req.model, req.lines, req.options, req.glossary)
        except QueueFull as exc:
            return error_response(503, f"server busy: {exc}")
        except DecoderStopped as exc:
            return error_response(503, f"the decoder has stopped ({exc}); restart the server")
        watcher = asyncio.ensure_future(wait_for_disconnect(request))
        waiting: set[asyncio.Future[Any]] = {job.future, watcher}
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not job.future.done():  # the client left, or the drain's deadline came
                self.batcher.cancel(job)
        if job.future.cancelled():
            return self.gone(
                request, "waiting", f"before its {len(req.lines)} sentence(s) were decoded"
            )
        try:
            results = job.future.result()
        except DecoderStopped as exc:
            return error_response(503, f"the decoder has stopped ({exc}); restart the server")
        except NonFiniteScores as exc:  # the model's own fault: said, not logged as a bug
            return error_response(500, f"model {req.model}: {exc.reason}")
        except NmtError as exc:  # e.g. a line longer than the model takes, with too_long=error
            return error_response(422, str(exc))
        elapsed = (time.perf_counter() - started) * 1000
        return json_response(
            {"translations": results, "model": req.model, "time_ms": round(elapsed, 2)}
        )

    async def translate_document_request(self, req: TranslateRequest, started: float) -> Response:
        try:
            answer = await translate_document(self.batcher, req)
        except QueueFull as exc:
            return error_response(503, f"server busy: {exc}")
        except DecoderStopped as exc:
            return error_response(503, f"the decoder has stopped ({exc}); restart the server")
        except NonFiniteScores as exc:
            return error_response(500, f"model {req.model}: {exc.reason}")
        except NmtError as exc:
            return error_response(422, str(exc))
        elapsed = (time.perf_counter() - started) * 1000
        return json_response({**answer, "model": req.model, "time_ms": round(elapsed, 2)})

    async def health(self, request: Request) -> Response:
        decoder = self.batcher.state
        status = "ok" if decoder == "running" else "error"
        payload = {"status": status, "models": self.names, "decoder": decoder}
        return json_response(payload, 200 if status == "ok" else 503)

    async def list_models(self, request: Request) -> Response:
        return json_response({"models": self.models})

    async def show_metrics(self, request: Request) -> Response:
        return Response(
            self.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    async def page(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")


async def translate_document(batcher: Batcher, req: TranslateRequest) -> dict[str, Any]:
    """An HTML or Markdown request (nmt/markup/): parsed and rebuilt in a worker thread, whose
    blocks go through the batcher like any lines. Answers {"document", "format", "blocks",
    "skipped", "translations"} (a row per block, their attention only when asked for; skipped:
    Markdown blocks left untranslated because their markup could not be followed)."""
    loop = asyncio.get_running_loop()
    # The words come with the attention; it is dropped again unless the client asked for it.
    options = dataclasses.replace(req.options, attention=True, attention_detail=False)
    rows: list[dict[str, Any]] = []

    def aligned(texts: list[str]) -> list[Aligned]:
        work = batcher.translate(req.model, texts, options, req.glossary)
        rows.extend(asyncio.run_coroutine_threadsafe(work, loop).result())
        return [
            Aligned(row["translation"], row["attention"]["src_words"],
                    row["attention"]["tgt_words"], sorted(parse_pharaoh(row["alignment"])[0]))
            for row in rows
        ]  # fmt: skip

    assert req.document is not None
    result = await asyncio.to_thread(translate_markup, req.document, req.format, aligned)
    if not req.options.attention:
        for row in rows:
            row.pop("attention", None)
            for sentence in row["sentences"]:
                sentence.pop("attention", None)
    return {"document": result.text, "format": req.format, "blocks": result.units,
            "skipped": result.skipped, "translations": rows}  # fmt: skip


async def bad_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BadRequest)
    return error_response(exc.status, exc.message, exc.close)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")


async def server_error(request: Request, exc: Exception) -> Response:
    # The traceback goes to the server's log (Starlette re-raises it); the client learns only
    # that the fault is ours.
    return error_response(500, "internal server error; the server log has the details")


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


# How long a stopping server waits for the batch being decoded once the drain is over.
STOP_SECONDS = 0.5


class Guard:
    """ASGI wrapper around the app: refuses what `AccessPolicy` refuses, counts requests in flight
    and their outcome for /metrics, answers 503 once a drain has begun, and 503 to the requests
    still open when the drain's deadline cuts them short (`ServerState.abort`)."""

    def __init__(
        self, app: Any, state: ServerState, metrics: Metrics, access: AccessPolicy
    ) -> None:
        self.app = app
        self.state = state
        self.metrics = metrics
        self.access = access

    async def __call__(
        self, scope: Any, receive: Callable[..., Any], send: Callable[..., Any]
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = _known(scope["path"])
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self.access.refusal(scope["method"], scope["path"], headers)
        if refusal is not None:
            await _send_json(send, refusal.status, {"error": refusal.message})
            self.metrics.request_done(path, refusal.status, 0.0)
            return
        if self.state.draining:
            await _send_json(send, 503, {"error": "the server is shutting down"}, close=True)
            self.metrics.request_done(path, 503, 0.0)
            return
        started = time.perf_counter()
        status: int | None = None
        task = asyncio.current_task()
        assert task is not None
        self.state.in_flight += 1
        self.state.tasks.add(task)

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except asyncio.CancelledError:
            if not self.state.aborting:
                raise
            if status is None:  # cut short by the drain's deadline: answered, not dropped
                status = 503
                await _send_json(send, 503, {"error": "the server stopped before answering"},
                                 close=True)  # fmt: skip
        finally:
            self.state.tasks.discard(task)
            self.state.in_flight -= 1
            if status is not None:  # else the client left first (counted as gone)
                self.metrics.request_done(path, status, time.perf_counter() - started)


def _known(path: str) -> str:
    """The metrics label of a path: fixed routes by name, everything else as one label, so that
    a client cannot grow the label set without bound."""
    if path in ("/", "/translate", "/health", "/models", "/metrics"):
        return path
    return "/static" if path.startswith("/static/") else "other"


async def _send_json(
    send: Callable[..., Any], status: int, payload: dict[str, Any], close: bool = False
) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
