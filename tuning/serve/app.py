"""The FastAPI app: POST /v1/classify, GET /health, the page at / and the OpenAPI page at /docs, all without a CDN."""

import logging
import secrets
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field, StrictStr
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from swagger_ui_bundle import swagger_ui_path

from tuning.data.waimai_csv import clean_review
from tuning.serve.batching import DynamicBatcher
from tuning.serve.service import ServedModels

MAX_BODY_BYTES = 1_000_000  # a request body over 1 MB is refused before it is parsed
STATIC_DIR = Path(__file__).resolve().parent / "static"
OPEN_PATHS = ("/health",)  # answered without the API key
PAGE_POLICY = "default-src 'self'"  # the page loads nothing from another origin (air-gapped machines)
REQUEST_SHAPE = '{"reviews": ["...", ...]}'
JSON_TYPES = {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number",
              bool: "true or false", type(None): "null"}
logger = logging.getLogger("serve")


@dataclass(frozen=True)
class ServeSettings:
    max_reviews: int  # per request
    batch_size: int  # reviews scored together, across requests
    batch_wait_s: float  # how long the first request of a batch waits for others
    api_key: str | None  # SERVE_API_KEY: every path but /health needs `Authorization: Bearer <key>`


class ClassifyRequest(BaseModel):
    reviews: list[StrictStr] = Field(
        description="the reviews to label, one string each (cleaned as training reviews were; none may be empty)",
        examples=[["送餐很快，饭菜还是热的，好评", "等了一个半小时，汤都洒了"]],
    )


class BaseAnswer(BaseModel):
    label: str
    probability: float


class Prediction(BaseModel):
    review: str = Field(description="the review as it was scored (cleaned)")
    label: str = Field(description="the label word with the highest log-probability after the prompt")
    probability: float = Field(description="the softmax over the label words' scores, of that label")
    base: BaseAnswer | None = Field(None, description="the base model's answer (only with serve.py --compare)")


class ClassifyResponse(BaseModel):
    model: str
    base_model: str | None = None
    predictions: list[Prediction] = Field(description="one per review, in input order")
    truncated: int = Field(description="reviews longer than the training run's model_max_length, cut as in training")


class Health(BaseModel):
    status: str
    model: str
    base_model: str | None
    device: str
    dtype: str
    label_words: list[str] = Field(description="the answers the model chooses from, positive first")
    batch_size: int
    max_reviews: int


def shown_path(path: Path) -> str:
    """A model folder as answers name it: relative to the current directory when inside it."""
    path = Path(path).absolute()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


class BearerKeyMiddleware:
    """Every path but OPEN_PATHS needs `Authorization: Bearer <key>`; otherwise 401 with a JSON message."""

    def __init__(self, app: ASGIApp, key: str):
        self.app = app
        self.key = key.encode("utf-8")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            problem = self.problem(Headers(scope=scope).get("authorization"))
            if problem:
                response = JSONResponse({"detail": problem}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def problem(self, header: str | None) -> str | None:
        if not header:
            return "missing API key: send the header Authorization: Bearer <key> (the server's SERVE_API_KEY)"
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode("utf-8"), self.key):
            return "wrong API key: send the header Authorization: Bearer <key> (the server's SERVE_API_KEY)"
        return None


class BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"the request body is over {limit:,} bytes; send fewer or shorter reviews")


class BodySizeMiddleware:
    """A request body over `limit` bytes gets 413: at once when its Content-Length says so, else when the bytes
    read pass the limit (the route's exception handler then answers)."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:
            error = BodyTooLarge(self.limit)
            await JSONResponse({"detail": error.detail}, status_code=error.status_code)(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, limited_receive, send)


def _json_type(value: object) -> str:
    return JSON_TYPES.get(type(value), type(value).__name__)


def validation_problem(error: dict, content_type: str | None) -> tuple[int, str]:
    """The status and one-line message for the first problem pydantic or the JSON parser found in a request."""
    kind, location = error["type"], tuple(error["loc"])
    if kind == "json_invalid":
        return 400, f"malformed JSON at character {location[-1]}: {error.get('ctx', {}).get('error', error['msg'])}"
    if content_type is not None and "json" not in content_type.lower() and location == ("body",):
        return 415, f"send the body as JSON with the header Content-Type: application/json, not {content_type}"
    if location == ("body",):
        if kind == "missing":
            return 422, f"empty body: send {REQUEST_SHAPE}"
        return 422, f"the body must be a JSON object {REQUEST_SHAPE}, got {_json_type(error['input'])}"
    if location == ("body", "reviews"):
        if kind == "missing":
            return 422, f'missing "reviews": send {REQUEST_SHAPE}'
        return 422, f'"reviews" must be a list of strings, got {_json_type(error["input"])}'
    if location[:2] == ("body", "reviews") and len(location) == 3:
        return 422, f"reviews[{location[2]}] must be a string, got {_json_type(error['input'])}"
    return 422, f"{'.'.join(map(str, location[1:]))}: {error['msg']}"


def check_reviews(reviews: list[str], max_reviews: int) -> list[str]:
    """The reviews cleaned as training reviews were; an empty list, too many or an empty review is an HTTP error."""
    if not reviews:
        raise HTTPException(422, '"reviews" is an empty list: give at least one review')
    if len(reviews) > max_reviews:
        raise HTTPException(413, f"{len(reviews)} reviews in one request; at most {max_reviews} (--max_reviews)")
    cleaned = [clean_review(review) for review in reviews]
    empty = [index for index, text in enumerate(cleaned) if not text]
    if empty:
        shown = ", ".join(f"reviews[{index}]" for index in empty[:5]) + (", ..." if len(empty) > 5 else "")
        raise HTTPException(422, f"{shown} {'is' if len(empty) == 1 else 'are'} empty (only whitespace or "
                                 "control characters)")
    return cleaned


def create_app(models: ServedModels, settings: ServeSettings) -> FastAPI:
    """The app around one shared set of models; its lifespan starts and stops the batching worker."""
    batcher = DynamicBatcher(models.answer, settings.batch_size, settings.batch_wait_s)
    model_name = shown_path(models.model_dir)
    base_name = shown_path(models.base_dir) if models.base_dir else None

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(
        title="waimai review sentiment",
        summary="Labels food-delivery reviews 积极 / 消极 with a fine-tuned Baichuan2 model (predict.py's label "
                "scoring).",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    app.add_middleware(BodySizeMiddleware, limit=MAX_BODY_BYTES)
    if settings.api_key:  # added last: the outermost, so a request without the key is refused before its body is read
        app.add_middleware(BearerKeyMiddleware, key=settings.api_key)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.mount("/docs/assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        status, message = validation_problem(error.errors()[0], request.headers.get("content-type"))
        return JSONResponse({"detail": message}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": error.detail}, status_code=error.status_code, headers=error.headers)

    @app.post("/v1/classify", response_model=ClassifyResponse, response_model_exclude_none=True,
              summary="Label reviews", responses={400: {}, 401: {}, 413: {}, 415: {}, 422: {}})
    async def classify(request: ClassifyRequest) -> dict:
        """Label each review with the tuned model (and the base model, with --compare), in input order.

        Requests that arrive together are scored together (dynamic batching)."""
        reviews = check_reviews(request.reviews, settings.max_reviews)
        try:
            answer = await batcher.submit(reviews)
        except Exception as error:
            logger.exception("scoring failed")
            raise HTTPException(500, f"scoring failed: {error}") from None
        return {"model": model_name, "base_model": base_name, **answer}

    @app.get("/health", response_model=Health, summary="Whether the model is loaded (no API key needed)")
    async def health() -> dict:
        return {
            "status": "ok",
            "model": model_name,
            "base_model": base_name,
            "device": models.device.kind,
            "dtype": str(models.dtype).removeprefix("torch."),
            "label_words": list(models.label_words),
            "batch_size": settings.batch_size,
            "max_reviews": settings.max_reviews,
        }

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Content-Security-Policy": PAGE_POLICY})

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title=f"{app.title}: API",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="/docs/assets/favicon-32x32.png",
        )

    return app
