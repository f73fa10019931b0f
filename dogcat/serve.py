"""`dogcat serve`: the HTTP API, one FastAPI app for uvicorn on one machine and for Ray Serve on a cluster.

A service that wants a verdict should not need the package in its process (the Python API) or a
process start per call (`dogcat predict`). `create_app` builds the one app both ways run:
`dogcat serve` hands it to uvicorn; `dogcat serve --address` hands the same builder to Ray Serve's
FastAPI ingress (`deploy_on_ray`), where `@serve.batch` replaces the local batcher.

Every answer row is `Prediction.as_row`, the row `dogcat predict --json` prints, so the API
cannot drift from the CLI. Uploads are decoded by dogcat.preprocessing with the limits every other
path uses, on threads, off the event loop. Concurrent requests are gathered for up to
`batch_wait_ms` into one `Classifier.classify_decoded` call of up to `max_batch` photos
(`MicroBatcher`): a model call on many photos costs far less per photo than one call each.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import io
import math
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import prometheus_client as prom
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from dogcat.artifacts import file_sha256
from dogcat.errors import DogcatError, UsageError
from dogcat.preprocessing import (
    MAX_FILE_BYTES,
    MAX_PIXELS,
    ImageError,
    ImageFormatError,
    ImageTooLarge,
    decode_image_with_size,
)

DEFAULT_PORT = 8000
MAX_BATCH = 32  # photos in one model call, and images in one /v1/classify/batch request
BATCH_WAIT_MS = 5.0  # how long the first request of a batch waits for others: a few ms of latency for throughput
QUEUE_PER_BATCH = 8  # requests waiting beyond this many full batches get 429, so memory stays bounded
# One photo at the byte limit plus multipart framing; a batch request shares the same budget.
MAX_BODY_BYTES = MAX_FILE_BYTES + 2**20
RETRY_AFTER_S = 1
TOKEN_ENV = "DOGCAT_API_TOKEN"
UPLOAD_NAME = "upload"  # a raw body's row `path`: it has no file name
WARM_UP_PHOTO = np.full((256, 256, 3), 127, np.uint8)  # any photo: the first call pays the runtime's set-up
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ApiError(Exception):
    """An answer other than 200, as JSON `{"error": {"code", "message"}}`; `code` is stable, the message is for people."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def image_error_code(error: ImageError) -> tuple[int, str]:
    """The HTTP status and stable code for an upload dogcat.preprocessing refused."""
    if isinstance(error, ImageTooLarge):
        return 413, "too_large"
    if isinstance(error, ImageFormatError):
        return 415, "unsupported_format"
    return 400, "unreadable_image"


# ---------------------------------------------------------------------------------------------
# Response schema (OpenAPI at /docs). A row is Prediction.as_row's; its p_<class> fields, which depend on
# the model's classes, are the documented extra fields (a test holds the others to the row's columns).

class Row(BaseModel):
    """One photo's answer: the row `dogcat predict --json` prints (`Prediction.as_row`), `p_cat`... included."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"additionalProperties": {
        "type": ["number", "null"], "description": "p_<class>: the probability of each class (/v1/model's classes)"}})
    path: str | None = Field(None, description="the upload's file name (`upload` for a raw body)")
    verdict: str | None = Field(None, description="cat, dog, neither, unsure or too_small; null on error")
    label: str | None = Field(None, description="the class the classifier alone would give")
    width: int | None = Field(None, description="the photo's upright width")
    height: int | None = None
    looks_like: str | None = Field(None, description="ImageNet's most probable class, by its everyday name")
    p_looks_like: float | None = None
    looks_like_id: str | None = Field(None, description="its WordNet id, e.g. n02125311")
    looks_like_group: str | None = Field(None, description="its kind (dogcat.imagenet_groups): dog, house_cat, big_cat, ...")
    reason: str | None = Field(None, description="what it looks like, where that says something: "
                               "'looks like a cougar (93%), not a house cat'")
    error: str | None = Field(None, description="why this photo could not be classified")
    error_code: str | None = Field(None, description="with `error` in a batch: unreadable_image, too_large or "
                                   "unsupported_format")
    explanation_png: str | None = Field(None, description="with ?explain=true: the heatmap over the photo, PNG, base64")


class BatchAnswer(BaseModel):
    rows: list[Row] = Field(description="one row per image, in the order sent")


class ErrorBody(BaseModel):
    code: str = Field(description="stable: unreadable_image, too_large, unsupported_format, invalid_parameters, "
                      "unauthorized, queue_full, not_ready, not_found, method_not_allowed")
    message: str


class ErrorAnswer(BaseModel):
    error: ErrorBody


class Health(BaseModel):
    status: str


class ModelCard(BaseModel):
    classes: list[str]
    runtime: str
    thresholds: dict[str, float]
    sha256: str | None = Field(None, description="of the .keras file the model was loaded from")
    image_size: int
    max_batch: int
    max_image_bytes: int
    max_pixels: int
    can_explain: bool
    warnings: list[str]


ERRORS = {status: {"model": ErrorAnswer} for status in (400, 401, 413, 415, 422, 429, 503)}


# ---------------------------------------------------------------------------------------------

class MicroBatcher:
    """Gathers concurrent `submit`s into calls of `run` on up to `max_batch` items.

    Up to `lanes` batches run at once (one model call per core). While one runs, the next batch
    gathers for at most `wait_s` after its first item arrived; items that queued while every lane
    was busy wait no longer. With nothing running, an item goes at once: a lone client pays no wait.
    """

    def __init__(self, run: Callable[[list], Awaitable[list]], max_batch: int, wait_s: float, lanes: int = 1):
        self.run, self.max_batch, self.wait_s = run, max_batch, wait_s
        self._items: deque = deque()
        self._arrived = asyncio.Event()
        self._lanes = asyncio.Semaphore(lanes)
        self._running: set[asyncio.Task] = set()
        self._busy = 0  # batches in the model now
        self._task = asyncio.get_running_loop().create_task(self._gather())

    async def submit(self, item):
        future = asyncio.get_running_loop().create_future()
        self._items.append((time.monotonic(), item, future))
        self._arrived.set()
        return await future

    async def _gather(self) -> None:
        while True:
            await self._lanes.acquire()
            while not self._items:
                self._arrived.clear()
                await self._arrived.wait()
            deadline = self._items[0][0] + self.wait_s
            while self._busy and len(self._items) < self.max_batch and (left := deadline - time.monotonic()) > 0:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except TimeoutError:
                    break
            batch = [self._items.popleft() for _ in range(min(self.max_batch, len(self._items)))]
            self._busy += 1
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list) -> None:
        try:
            results = await self.run([item for _, item, _ in batch])
        except Exception as error:  # every request in the batch hears of it
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(error)
        else:
            for (_, _, future), result in zip(batch, results, strict=True):
                if not future.done():  # its client left
                    future.set_result(result)
        finally:
            self._busy -= 1
            self._lanes.release()

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, *self._running, return_exceptions=True)


@dataclass
class Job:
    name: str
    decoded: tuple[np.ndarray, tuple[int, int]]
    explain: bool


class Metrics:
    """Prometheus metrics in a registry of the app's own (two apps in one process never collide)."""

    def __init__(self):
        self.registry = prom.CollectorRegistry()
        registry = self.registry
        self.requests = prom.Counter("dogcat_requests", "HTTP requests answered", ["route", "status"], registry=registry)
        self.latency = prom.Histogram("dogcat_request_seconds", "Time to answer a request", ["route"],
                                      buckets=LATENCY_BUCKETS, registry=registry)
        self.batch_size = prom.Histogram("dogcat_batch_size", "Photos in one model call", buckets=BATCH_BUCKETS,
                                         registry=registry)
        self.verdicts = prom.Counter("dogcat_verdicts", "Verdicts given", ["verdict"], registry=registry)
        self.errors = prom.Counter("dogcat_errors", "Errors answered, and photos in a batch that could not be read, "
                                   "by code", ["code"], registry=registry)
        self.waiting = prom.Gauge("dogcat_photos_waiting", "Photos accepted and not yet answered (429 past "
                                  "the queue's size)", registry=registry)


class Engine:
    """One model, its batcher and the service's state, shared by every request of one process.

    `load` gives the Classifier; it runs on a thread after start-up so /healthz answers while it
    loads. Ready (/readyz) once a warm-up photo has been classified. `ray_batching`: Ray Serve's
    `@serve.batch` gathers the requests instead of `MicroBatcher` (inside a Ray Serve replica).
    """

    def __init__(self, load: Callable[[], Any], model_file: Path | None = None, max_batch: int = MAX_BATCH,
                 batch_wait_ms: float = BATCH_WAIT_MS, ray_batching: bool = False):
        if not (isinstance(max_batch, int) and max_batch >= 1):
            raise UsageError(f"max_batch must be a whole number, 1 or more. Received: max_batch={max_batch!r}")
        if not (math.isfinite(batch_wait_ms) and batch_wait_ms >= 0):
            raise UsageError(f"batch_wait_ms must be a finite number, 0 or more. Received: batch_wait_ms={batch_wait_ms!r}")
        self.load, self.model_file = load, model_file
        self.max_batch, self.wait_s, self.ray_batching = max_batch, batch_wait_ms / 1000, ray_batching
        self.max_queue = max_batch * QUEUE_PER_BATCH
        self.metrics = Metrics()
        self.metrics.waiting.set_function(lambda: self.waiting)
        self.classifier = None
        self.sha256: str | None = None
        self.ready = False
        self.failure: str | None = None
        self.waiting = 0  # photos accepted and not yet answered
        self._submit: Callable[[Job], Awaitable] | None = None
        self._closers: list[Callable] = []

    async def start(self) -> None:
        """Load the model and classify the warm-up photo; on failure, /readyz says why."""
        loop = asyncio.get_running_loop()
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self._decoder = ThreadPoolExecutor(max(2, cores), thread_name_prefix="dogcat-decode")
        self._closers.append(partial(self._decoder.shutdown, wait=False, cancel_futures=True))
        try:
            self.classifier = await loop.run_in_executor(self._decoder, self.load)
            if self.model_file is not None:
                self.sha256 = await loop.run_in_executor(self._decoder, file_sha256, self.model_file)
            # One model call at a time on Keras (it spreads one over the cores) and in a Ray Serve replica
            # (it holds one CPU); on ONNX Runtime here, one per core.
            lanes = self.classifier.workers if self.classifier.runner.parallel and not self.ray_batching else 1
            self._model_lanes = ThreadPoolExecutor(lanes, thread_name_prefix="dogcat-classify")
            self._closers.append(partial(self._model_lanes.shutdown, wait=False, cancel_futures=True))
            if self.ray_batching:
                from ray import serve

                async def run(jobs: list[Job]) -> list:  # a plain function: serve.batch keys its queue on it
                    return await self._classify_jobs(jobs)

                self._submit = serve.batch(max_batch_size=self.max_batch, batch_wait_timeout_s=self.wait_s,
                                           max_concurrent_batches=lanes)(run)
            else:
                batcher = MicroBatcher(self._classify_jobs, self.max_batch, self.wait_s, lanes)
                self._submit = batcher.submit
                self._closers.append(batcher.close)
            image = await loop.run_in_executor(self._decoder, decode_image_with_size, WARM_UP_PHOTO,
                                               self.classifier.image_size)
            await self._submit(Job("warm-up", image, False))
        except Exception as error:
            self.failure = str(error) if isinstance(error, DogcatError) else f"{type(error).__name__}: {error}"
            raise
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        for close in reversed(self._closers):
            result = close()
            if asyncio.iscoroutine(result):
                await result

    async def _classify_jobs(self, jobs: list[Job]) -> list:
        """One model call per explain setting (most batches have one), on a model lane thread."""
        loop = asyncio.get_running_loop()
        answers: list = [None] * len(jobs)
        for explain in (False, True):
            rows = [i for i, job in enumerate(jobs) if job.explain == explain]
            if rows:
                predictions = await loop.run_in_executor(self._model_lanes, partial(
                    self.classifier.classify_decoded, [jobs[i].name for i in rows], [jobs[i].decoded for i in rows],
                    explain=explain))
                for i, prediction in zip(rows, predictions, strict=True):
                    answers[i] = prediction
        self.metrics.batch_size.observe(len(jobs))
        return answers

    def admit(self, count: int = 1) -> None:
        """Raise 503 until ready, 429 when the queue is full; else count `count` photos in."""
        if not self.ready:
            raise self.not_ready()
        if self.waiting + count > self.max_queue:
            raise ApiError(429, "queue_full", f"{self.waiting} photos are waiting, the most this server queues is "
                           f"{self.max_queue}; try again shortly.", {"Retry-After": str(RETRY_AFTER_S)})
        self.waiting += count

    def not_ready(self) -> ApiError:
        return ApiError(503, "not_ready", self.failure or "The model is loading; try again shortly.",
                        {"Retry-After": str(RETRY_AFTER_S)})

    async def classify(self, name: str, data: bytes, explain: bool) -> dict:
        """One photo's row; raises ImageError where it cannot be read (the caller decides the answer)."""
        if explain and not self.classifier.can_explain:
            raise ApiError(422, "invalid_parameters", "This model cannot explain its predictions (an ONNX twin "
                           "exported before explanations: run `dogcat export` again). Received: explain=true")
        loop = asyncio.get_running_loop()
        decoded = await loop.run_in_executor(self._decoder, _decode, data, self.classifier.image_size)
        prediction = await self._submit(Job(name, decoded, explain))
        row = prediction.as_row(self.classifier.class_names.values())
        if prediction.verdict is not None:
            self.metrics.verdicts.labels(prediction.verdict).inc()
        if explain and prediction.heatmap is not None:
            row["explanation_png"] = await loop.run_in_executor(self._decoder, _overlay_png, data, prediction.heatmap)
        return row

    def model_card(self) -> ModelCard:
        classifier = self.classifier
        return ModelCard(classes=list(classifier.class_names.values()), runtime=classifier.runtime,
                         thresholds={k: float(v) for k, v in asdict(classifier.rules).items()}, sha256=self.sha256,
                         image_size=classifier.image_size, max_batch=self.max_batch, max_image_bytes=MAX_FILE_BYTES,
                         max_pixels=MAX_PIXELS, can_explain=classifier.can_explain, warnings=classifier.warnings)


def _decode(data: bytes, image_size: int) -> tuple[np.ndarray, tuple[int, int]]:
    try:
        return decode_image_with_size(data, image_size)
    except ImageError as error:  # "image: not an image..." -> the reason alone, as decode_sources gives it
        raise type(error)(str(error).removeprefix("image: ")) from None


def _overlay_png(data: bytes, heatmap: np.ndarray) -> str:
    from dogcat.explain import overlay

    buffer = io.BytesIO()
    overlay(data, heatmap).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# ---------------------------------------------------------------------------------------------

class _BodyLimit:
    """Refuse a request body over `limit` bytes with 413, by its Content-Length or while it streams in,
    before it is held in memory."""

    def __init__(self, app, limit: int, metrics: Metrics):
        self.app, self.limit, self.metrics = app, limit, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            self.metrics.errors.labels("too_large").inc()
            return await _error_response(ApiError(413, "too_large", self._message()))(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise ApiError(413, "too_large", self._message())
            return message

        await self.app(scope, limited, send)

    def _message(self) -> str:
        return (f"The request body is over {self.limit // 2**20} MiB (one photo may be {MAX_FILE_BYTES // 2**20} MiB; "
                f"split a batch). Received: over {self.limit} bytes")


class _Observe:
    """Count every answer and time it, by route (a fixed set, so an attacker's paths cannot grow the metrics)."""

    def __init__(self, app, metrics: Metrics, routes: set[str]):
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope["path"] if scope["path"] in self.routes else "other"
        status = 500
        start = time.perf_counter()

        async def observed_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)


def _error_response(error: ApiError) -> JSONResponse:
    return JSONResponse({"error": {"code": error.code, "message": error.message}}, status_code=error.status,
                        headers=error.headers)


def read_token(token_file: str | Path | None = None) -> str | None:
    """The bearer token: the first line of `token_file`, else $DOGCAT_API_TOKEN, else None (no auth)."""
    if token_file is not None:
        try:
            token = Path(token_file).read_text().strip()
        except (OSError, UnicodeDecodeError) as error:
            raise UsageError(f"Cannot read the token file ({getattr(error, 'strerror', None) or type(error).__name__})."
                             f" Received: token_file={str(token_file)!r}") from None
        if not token:
            raise UsageError(f"The token file is empty. Received: token_file={str(token_file)!r}")
        return token
    return os.environ.get(TOKEN_ENV) or None


def model_file(model: str | Path | None) -> Path:
    """The .keras file `Classifier.from_path(model)` loads (its sha256 is in /v1/model)."""
    from dogcat.model_folder import ModelFolder

    return ModelFolder.locate(model).keras


def create_app(model: str | Path | None = None, runtime: str | None = None, *, classifier=None,
               max_batch: int = MAX_BATCH, batch_wait_ms: float = BATCH_WAIT_MS, token: str | None = None,
               ray_batching: bool = False) -> FastAPI:
    """The dogcat HTTP API. `classifier`: one already loaded (the CLI loads it first, so a bad
    --model is one line on the terminal); else `model` and `runtime` are loaded after start-up.
    `token`: the bearer token every /v1 route and /metrics want (None: no auth)."""
    if classifier is not None:
        def load():
            return classifier
    else:
        from dogcat.inference import Classifier

        load = partial(Classifier.from_path, model, runtime=runtime)
    # With a classifier given, `model` (if any) names the file it came from, for /v1/model's sha256.
    engine = Engine(load, model_file(model) if classifier is None or model is not None else None,
                    max_batch, batch_wait_ms, ray_batching)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if ray_batching:  # a Ray Serve replica takes requests once its start-up is done: be ready by then
            await engine.start()
            starting = None
        else:  # uvicorn: /healthz answers at once, /readyz once the model is warm
            starting = asyncio.get_running_loop().create_task(engine.start())
            starting.add_done_callback(lambda task: task.cancelled() or task.exception())  # the failure is in /readyz
        try:
            yield
        finally:
            if starting is not None:
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)
            await engine.stop()

    app = FastAPI(title="dogcat", summary="Is it a cat, a dog, or neither?", version=_version(), lifespan=lifespan)
    app.state.engine = engine

    def authorized(request: Request) -> None:
        if token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise ApiError(401, "unauthorized", "This server wants `Authorization: Bearer TOKEN`.",
                           {"WWW-Authenticate": "Bearer"})

    guarded = [Depends(authorized)]

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        engine.metrics.errors.labels(error.code).inc()
        return _error_response(error)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        return await api_error(request, ApiError(422, "invalid_parameters", problems))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "bad_request")
        return await api_error(request, ApiError(error.status_code, code, str(error.detail), error.headers))

    @app.get("/healthz", response_model=Health, summary="The process is alive")
    async def healthz() -> Health:
        return Health(status="ok")

    @app.get("/readyz", response_model=Health, responses={503: ERRORS[503]},
             summary="The model is loaded and has classified a warm-up photo")
    async def readyz() -> Health:
        if not engine.ready:
            raise engine.not_ready()
        return Health(status="ready")

    @app.get("/metrics", dependencies=guarded, response_class=Response, summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(prom.generate_latest(engine.metrics.registry), media_type=prom.CONTENT_TYPE_LATEST)

    @app.get("/v1/model", dependencies=guarded, response_model=ModelCard, responses={503: ERRORS[503]},
             summary="The model's classes, thresholds, runtime and sha256")
    async def model_card() -> ModelCard:
        if not engine.ready:
            raise engine.not_ready()
        return engine.model_card()

    @app.post("/v1/classify", dependencies=guarded, response_model=Row, response_model_exclude_unset=True,
              responses=ERRORS, summary="Classify one image (a multipart `file`, or the raw body)",
              openapi_extra={"requestBody": _request_body(one=True)})
    async def classify(request: Request, explain: bool = Query(False, description="add the heatmap as PNG base64")) -> Row:
        engine.admit()
        try:
            images = await _images(request, 1)
            if len(images) != 1:
                raise ApiError(422, "invalid_parameters", f"Send one image: a multipart `file` field, or the raw body. "
                               f"Received: {len(images)} files")
            name, data = images[0]
            try:
                return Row(**await engine.classify(name, data, explain))
            except ImageError as error:
                status, code = image_error_code(error)
                raise ApiError(status, code, str(error)) from None
        finally:
            engine.waiting -= 1

    @app.post("/v1/classify/batch", dependencies=guarded, response_model=BatchAnswer,
              response_model_exclude_unset=True, responses=ERRORS,
              summary=f"Classify up to {max_batch} images (multipart, one `files` field each): a row each",
              openapi_extra={"requestBody": _request_body(one=False)})
    async def classify_batch(request: Request, explain: bool = Query(False, description="add heatmaps")) -> BatchAnswer:
        if request.headers.get("content-type", "").partition(";")[0].strip() != "multipart/form-data":
            raise ApiError(422, "invalid_parameters", "A batch is multipart/form-data, one file field per image. "
                           f"Received: content-type={request.headers.get('content-type')!r}")
        images = await _images(request, max_batch)
        if not images:
            raise ApiError(422, "invalid_parameters", "The batch has no files. Received: 0 files")
        engine.admit(len(images))
        try:
            rows = await asyncio.gather(*(_row_or_error(engine, name, data, explain) for name, data in images))
        finally:
            engine.waiting -= len(images)
        return BatchAnswer(rows=[Row(**row) for row in rows])

    routes = {route.path for route in app.routes}
    app.add_middleware(_BodyLimit, limit=MAX_BODY_BYTES, metrics=engine.metrics)
    app.add_middleware(_Observe, metrics=engine.metrics, routes=routes)
    return app


async def _row_or_error(engine: Engine, name: str, data: bytes, explain: bool) -> dict:
    """A batch's row: a photo that cannot be read is a row with its error, as in `dogcat predict --json`."""
    from dogcat.verdict import Prediction

    try:
        return await engine.classify(name, data, explain)
    except ImageError as error:
        code = image_error_code(error)[1]
        engine.metrics.errors.labels(code).inc()
        return {**Prediction(name, error=str(error)).as_row(engine.classifier.class_names.values()), "error_code": code}


async def _images(request: Request, most: int) -> list[tuple[str, bytes]]:
    """(name, bytes) of each file in a multipart body, or the raw body as one image."""
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if kind != "multipart/form-data":
        return [(UPLOAD_NAME, await request.body())]
    try:
        form = await request.form(max_files=most, max_fields=most)
    except StarletteHTTPException as error:  # Starlette's parser: too many parts, or broken framing
        raise ApiError(422, "invalid_parameters", f"{error.detail} Received: more than {most} files, or a broken "
                       "multipart body") from None
    images = []
    for _, value in form.multi_items():
        if isinstance(value, UploadFile):
            images.append((value.filename or UPLOAD_NAME, await value.read()))
    await form.close()
    return images


def _request_body(one: bool) -> dict:
    field = {"type": "string", "format": "binary"}
    files = {"file": field} if one else {"files": {"type": "array", "items": field}}
    content = {"multipart/form-data": {"schema": {"type": "object", "properties": files}}}
    if one:
        content["application/octet-stream"] = {"schema": field}
        content["image/*"] = {"schema": field}
    return {"required": True, "content": content}


def _version() -> str:
    from dogcat import __version__

    return __version__


# ---------------------------------------------------------------------------------------------

def serve_locally(app: FastAPI, host: str, port: int, drain_s: float = 30.0) -> None:
    """Run `app` on uvicorn until SIGTERM or Ctrl-C. SIGTERM, a supervisor's normal stop, drains the
    requests in flight (up to `drain_s`) and returns; uvicorn would re-raise it and exit 143."""
    import signal

    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            super().handle_exit(sig, frame)
            if sig == signal.SIGTERM:
                self._captured_signals.remove(sig)  # drained: a clean stop, not a kill

    config = uvicorn.Config(app, host=host, port=port, timeout_graceful_shutdown=drain_s, log_level="warning",
                            access_log=False, lifespan="on")
    Server(config).run()


def ray_deployment_options(replicas: int, max_batch: int) -> dict:
    """`serve.deployment`'s options: one CPU a replica, and each let take a batch's worth of requests
    at once plus the next batch's while one runs (at Ray's default of 5, `@serve.batch` never gathered
    more than 5)."""
    return {"num_replicas": replicas, "ray_actor_options": {"num_cpus": 1}, "max_ongoing_requests": 2 * max_batch,
            "health_check_period_s": 5}


def deploy_on_ray(address: str, replicas: int, host: str, port: int, model: str | Path | None = None,
                  runtime: str | None = None, max_batch: int = MAX_BATCH, batch_wait_ms: float = BATCH_WAIT_MS,
                  token: str | None = None, name: str = "dogcat", blocking: bool = True,
                  log: Callable[[str], None] | None = None):
    """Deploy `create_app` on the Ray cluster at `address` (HOST:PORT; "local" starts one here),
    `replicas` of it, one CPU each, behind Ray Serve's proxy on `host:port`. The app is built on each
    replica (`serve.ingress` with a builder), where `@serve.batch` gathers requests.

    `blocking`: serve until SIGTERM or Ctrl-C, then delete the deployment; else return its handle.
    `log` hears when every replica is up.
    """
    import signal
    import threading

    import ray
    from ray import serve

    if isinstance(model, str | Path):
        model = str(Path(model).resolve())  # the replicas may run in another folder

    def build() -> FastAPI:
        return create_app(model, runtime, max_batch=max_batch, batch_wait_ms=batch_wait_ms, token=token,
                          ray_batching=True)

    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False,  # "local": a new Ray here, never a stale one found
                 runtime_env={"env_vars": {"OPENBLAS_NUM_THREADS": "1"}})
    stop = threading.Event()
    if blocking:  # before the deployment starts: a SIGTERM while it does (Ray's own handler aborts) stops it after
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    serve.start(http_options={"host": host, "port": port})
    deployment = serve.deployment(name=name, **ray_deployment_options(replicas, max_batch))(serve.ingress(build)())
    try:
        handle = serve.run(deployment.bind(), name=name, route_prefix="/")
        if not blocking:
            return handle
        if log is not None:
            log(f"{replicas} replica(s) serving on http://{host}:{port}")
        while not stop.wait(1):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        if blocking:
            serve.delete(name)
    return None
