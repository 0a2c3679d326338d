"""The HTTP server: an OpenAI-compatible chat endpoint that also returns masks and boxes, plus a viewer.

``create_app(predictor, config)`` builds the FastAPI app around one model instance. Requests are parsed
by :mod:`citrus_v.serve.schemas` (every error a 4xx naming the field), queued and batched by
:mod:`citrus_v.serve.batching`. ``create_app(loader=...)`` loads the model in the background so that
``/healthz`` answers at once and ``/readyz`` turns 200 when the model is in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.background import BackgroundTask

from citrus_v.serve.batching import BatchPredictor, BatchQueue, QueueFull, RefinePredictor, TilePredictor
from citrus_v.serve.budget import PixelBudget
from citrus_v.serve.errors import RequestError
from citrus_v.serve.schemas import ChatRequest, build_completion, completion_id, parse_chat_request
from citrus_v.serve.settings import ServeConfig, host_allowed
from citrus_v.serve.streaming import ChunkWriter, sse_stream

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).parent / "static"


class ServerState:
    def __init__(self, config: ServeConfig):
        self.config = config
        self.queue: BatchQueue | None = None
        self.load_error: str | None = None
        self.started = time.time()
        self.pixels = PixelBudget(config.max_pixels_in_flight, config.max_request_pixels)

    @property
    def ready(self) -> bool:
        return self.queue is not None and self.queue.running

    def model_name(self) -> str:
        if self.config.model_name:
            return self.config.model_name
        return self.queue.predictor.model_name if self.queue else "citrus-v"


def create_app(
    predictor: BatchPredictor | None = None,
    config: ServeConfig | None = None,
    loader: Callable[[], BatchPredictor] | None = None,
    on_load_error: Callable[[str], None] | None = None,
) -> FastAPI:
    """The app. Pass a ready ``predictor``, or a ``loader`` that builds one (run in a thread at startup).
    ``on_load_error(message)`` is called when the loader fails (``citrus-v serve`` stops and exits non-zero);
    without it the app stays up and ``/readyz`` says why."""
    if (predictor is None) == (loader is None):
        raise ValueError("create_app: pass exactly one of predictor= or loader=")
    state = ServerState(config or ServeConfig())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        load_task = asyncio.create_task(_start(state, predictor, loader, on_load_error))
        yield
        load_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await load_task
        if state.queue is not None:
            await state.queue.stop()

    docs = state.config.docs
    app = FastAPI(title="citrus-v", lifespan=lifespan, docs_url="/docs" if docs else None, redoc_url=None,
                  openapi_url="/openapi.json" if docs else None)
    app.state.citrus = state
    _add_guards(app, state)
    _add_status_routes(app, state)

    _add_chat_route(app, state)
    _add_volume_route(app, state)

    @app.get("/")
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _add_chat_route(app: FastAPI, state: ServerState) -> None:
    """POST /v1/chat/completions: checks, the pixel lease, then a completion or its stream."""
    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        _check_auth(request, state.config)
        _check_ready(state)
        # refuse before decoding images when the queue is already full: decoding is the costly part
        if state.queue.is_full():
            raise RequestError(503, "server busy: request queue is full, retry later", code="queue_full")
        _check_content_type(request)
        body = await _read_json(request, state.config)
        _check_model_name(body, state)
        if isinstance(body, dict) and body.get("prompts") is not None and not isinstance(state.queue.predictor, RefinePredictor):
            raise RequestError(501, "this model does not take point/box prompts", "prompts", code="prompts_unsupported")
        if isinstance(body, dict) and body.get("tiles") is not None and not isinstance(state.queue.predictor, TilePredictor):
            raise RequestError(501, "this model does not take tiles", "tiles", code="tiles_unsupported")
        lease = state.pixels.lease()  # each image's pixels are counted from its header, before decoding
        release_now = True
        try:
            chat = await asyncio.to_thread(parse_chat_request, body, state.config, reserve=lease.take)
            del body  # its base64 strings (up to max_request_bytes): from here the decoded images are what is held
            _check_with_model(state.queue.predictor, chat)
            cid = completion_id()
            name = state.model_name()
            if chat.stream:
                stream = await _start_stream(state, chat, ChunkWriter(chat, name, cid))
                release_now = False  # the stream still reads the images (return_images): released when sent
                return StreamingResponse(
                    stream, media_type="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}, background=BackgroundTask(lease.release),
                )
            prediction = await _predict(state, chat)
            return JSONResponse(build_completion(prediction, chat, name, cid))
        finally:
            if release_now:
                lease.release()


def _check_ready(state: ServerState) -> None:
    if not state.ready:
        raise RequestError(503, "the model is still loading" if not state.load_error else "the model failed to load",
                           code="not_ready")


def _add_volume_route(app: FastAPI, state: ServerState) -> None:
    """POST /v1/volumes/segment: a NIfTI or DICOM series segmented slice by slice (``citrus_v.serve.volumes``)."""
    from citrus_v.serve.schemas import SamplingParams
    from citrus_v.serve.volumes import QueuedSlices, parse_volume_request, segment_upload

    @app.post("/v1/volumes/segment")
    async def segment_volume_route(request: Request) -> Response:
        _check_auth(request, state.config)
        _check_ready(state)
        _check_content_type(request)
        body = await _read_json(request, state.config)
        _check_model_name(body, state)
        volume_request = await asyncio.to_thread(parse_volume_request, body)
        del body
        sampling = SamplingParams(max_tokens=state.config.default_max_tokens)
        slices = QueuedSlices(state.queue, asyncio.get_running_loop(), sampling, state.config.request_timeout_s)
        lease = state.pixels.lease()  # the voxels are counted from the headers, before decoding
        try:
            answer = await asyncio.to_thread(segment_upload, volume_request, slices, lease.take)
            return JSONResponse({"model": state.model_name(), **answer})
        finally:
            lease.release()


def _add_guards(app: FastAPI, state: ServerState) -> None:
    """CORS (only when asked for), the Host check, and RequestError as its JSON body."""
    if state.config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=state.config.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    @app.middleware("http")
    async def _host_guard(request: Request, call_next):
        # outermost: a page on another domain rebound to this address arrives with that domain as Host
        host = request.headers.get("host", "")
        if not host_allowed(host, state.config):
            err = RequestError(400, f"Host {host[:100]!r} is not this server's address (serve --allowed-host NAME)",
                               "Host", code="invalid_host")
            return JSONResponse(err.to_body(), status_code=400)
        return await call_next(request)

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, err: RequestError) -> JSONResponse:
        headers = {"Retry-After": "1"} if err.status in (429, 503) else None
        if err.status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        return JSONResponse(err.to_body(), status_code=err.status, headers=headers)

    _add_openai_error_shape(app)


HTTP_ERROR_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large", 429: "rate_limited"}


def _add_openai_error_shape(app: FastAPI) -> None:
    """Every error the framework raises (unknown route, wrong method, a validation error, a crash)
    in OpenAI's ``{"error": {"message", "type", "param", "code"}}`` rather than FastAPI's ``{"detail"}``:
    OpenAI clients read ``error.message``."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, err: HTTPException) -> JSONResponse:
        status = err.status_code if 400 <= err.status_code < 600 else 500
        if status == 404:
            message = f"no route {request.method} {request.url.path} (see GET /v1/models, POST /v1/chat/completions)"
        elif status == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(err.detail)
        body = RequestError(status, message, code=HTTP_ERROR_CODES.get(status, "http_error")).to_body()
        return JSONResponse(body, status_code=status, headers=getattr(err, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
        first = (err.errors() or [{}])[0]
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or None
        body = RequestError(422, str(first.get("msg", "invalid request")), where, code="validation_error").to_body()
        return JSONResponse(body, status_code=422)

    @app.exception_handler(Exception)
    async def _crash(request: Request, err: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        body = RequestError(500, f"internal error: {type(err).__name__}", code="internal_error").to_body()
        return JSONResponse(body, status_code=500)


def _add_status_routes(app: FastAPI, state: ServerState) -> None:
    """Liveness, readiness (with the queue's and the pixel budget's figures) and the model list."""
    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        if state.ready:
            stats = state.queue.stats
            return JSONResponse({
                "status": "ready", "model": state.model_name(), "queue": state.queue.pending(),
                "batches": stats.batches, "requests": stats.requests, "largest_batch": stats.largest_batch,
                "failures": stats.failures, "max_rss_mb": _max_rss_mb(),
                "pixels_in_flight": state.pixels.held, "peak_pixels_in_flight": state.pixels.peak,
                "max_pixels_in_flight": state.pixels.limit, "pixel_budget_mb": state.pixels.limit_mb,
            })
        status = "failed" if state.load_error else "loading"
        return JSONResponse({"status": status, "error": state.load_error}, status_code=503)

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        _check_auth(request, state.config)
        return {
            "object": "list",
            "data": [{"id": state.model_name(), "object": "model", "created": int(state.started), "owned_by": "citrus-v"}],
        }


async def _start(state: ServerState, predictor: BatchPredictor | None, loader: Callable[[], BatchPredictor] | None,
                 on_load_error: Callable[[str], None] | None = None) -> None:
    try:
        model = predictor if predictor is not None else await asyncio.to_thread(loader)
    except Exception as err:  # surfaced by /readyz, and to on_load_error (serve exits)
        log.exception("model failed to load")
        state.load_error = f"{type(err).__name__}: {err}"
        if on_load_error is not None:
            on_load_error(state.load_error)
        return
    state.config = _limit_tokens_to_context(state.config, model)
    queue = BatchQueue(model, state.config)
    await queue.start()
    state.queue = queue


def _limit_tokens_to_context(config: ServeConfig, model: BatchPredictor) -> ServeConfig:
    """An unset ``max_tokens_limit`` becomes the model's context (``max_context_tokens``), when it says
    (a copy: the caller's config is left as it was)."""
    import dataclasses

    context = getattr(model, "max_context_tokens", None)
    if config.max_tokens_limit is not None or not isinstance(context, int) or context < 1:
        return config
    log.info("max_tokens limited to the model's context: %d", context)
    return dataclasses.replace(config, max_tokens_limit=context, default_max_tokens=min(config.default_max_tokens, context))


def _check_with_model(predictor: BatchPredictor, chat: ChatRequest) -> None:
    """What only the model knows (its tokenizer's reserved strings, the sizes its ViT takes) -> a 400
    before the request joins a batch. A predictor without these checks is served as before."""
    check_prompt = getattr(predictor, "check_prompt", None)
    check_conversation = getattr(predictor, "check_conversation", None)
    try:
        if chat.conversation is not None and check_conversation is not None:
            check_conversation(chat.conversation, "messages")
        elif check_prompt is not None and chat.prompt:
            check_prompt(chat.prompt, "user text")
    except ValueError as err:
        raise RequestError(400, str(err), "messages", code="reserved_token") from None
    check_size = getattr(predictor, "check_image_size", None)
    if check_size is not None:
        for i, image in enumerate(chat.images):
            try:
                check_size(*image.size, f"image {i}")
            except ValueError as err:
                raise RequestError(400, str(err), "messages", code="unsupported_image_size") from None


async def _start_stream(state: ServerState, chat: ChatRequest, writer: ChunkWriter) -> AsyncIterator[str]:
    """Queue a streamed request and wait for its first text piece (or its end): an error before
    any text still gets its own status code; after it, the stream carries it."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[str] = asyncio.Queue()
    arrived = asyncio.Event()

    def put(piece: str) -> None:  # on the event loop
        events.put_nowait(piece)
        arrived.set()

    task = asyncio.create_task(_predict(state, chat, lambda piece: loop.call_soon_threadsafe(put, piece)))
    waiter = asyncio.ensure_future(arrived.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if not waiter.done():
        waiter.cancel()
    if task.done() and events.empty() and task.exception() is not None:
        raise task.exception()
    return sse_stream(writer, events, task)


async def _predict(state: ServerState, chat: ChatRequest, on_text: Callable[[str], None] | None = None):
    try:
        return await asyncio.wait_for(
            state.queue.submit([image.pixels for image in chat.images], chat.text_input, chat.sampling, chat.prompts,
                               on_text, chat.tiles),
            timeout=state.config.request_timeout_s,
        )
    except QueueFull:
        raise RequestError(503, "server busy: request queue is full, retry later", code="queue_full") from None
    except asyncio.TimeoutError:
        raise RequestError(504, f"no answer within request_timeout_s={state.config.request_timeout_s}", code="timeout") from None
    except RequestError:
        raise
    except ValueError as err:
        # the predictor validates what it is given (image count vs prompt, sizes): the client's input
        raise RequestError(422, f"the model rejected the input: {err}", code="model_rejected_input") from None
    except Exception as err:
        log.exception("prediction failed")
        raise RequestError(500, f"prediction failed: {type(err).__name__}: {err}", code="prediction_failed") from None


def _max_rss_mb() -> float | None:
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)  # Linux reports KiB


def _check_auth(request: Request, config: ServeConfig) -> None:
    if config.api_key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    # constant-time compare: the key must not leak through response timing
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), config.api_key.encode()):
        raise RequestError(401, "missing or wrong API key (Authorization: Bearer <key>)", code="invalid_api_key")


def _check_content_type(request: Request) -> None:
    # a web page can POST text/plain to any address without a CORS preflight; application/json it cannot
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        raise RequestError(415, f"Content-Type must be application/json, got {media or 'none'!r}", "Content-Type",
                           code="unsupported_media_type")


def _check_model_name(body: Any, state: ServerState) -> None:
    model = body.get("model") if isinstance(body, dict) else None
    if model is None:
        return
    names = [state.model_name(), *state.config.model_aliases]
    if model not in names:
        raise RequestError(404, f"model {str(model)[:100]!r} is not served here (this server serves {names})", "model",
                           code="model_not_found")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def _read_json(request: Request, config: ServeConfig) -> Any:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > config.max_request_bytes:
        raise RequestError(413, f"request body is {length} bytes, above max_request_bytes={config.max_request_bytes}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > config.max_request_bytes:  # a chunked upload has no Content-Length to check up front
            raise RequestError(413, f"request body exceeds max_request_bytes={config.max_request_bytes}")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw:
        raise RequestError(400, "request body is empty (expected a JSON object)")
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as err:
        raise RequestError(400, f"request body is not UTF-8 ({err})", code="invalid_json") from None
    except json.JSONDecodeError as err:
        raise RequestError(400, f"malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}", code="invalid_json") from None
    except (ValueError, RecursionError) as err:
        raise RequestError(400, f"malformed JSON: {err}", code="invalid_json") from None
