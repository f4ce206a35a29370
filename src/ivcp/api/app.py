"""``llamafactory-cli api`` for ``stage: action_cls``: a FastAPI app shaped like vLLM's classification API.

LLaMA-Factory's ``run_api`` loads every model through ``ChatModel``, which knows generation and value heads only;
``ivcp.integration`` sends action classifiers here instead. Same conventions as upstream's API: ``API_HOST``,
``API_PORT``, ``API_KEY`` (a bearer key on every route but ``/health``), ``API_MODEL_NAME``, ``FASTAPI_ROOT_PATH``.
One process serves one model; run several behind a load balancer to scale out. This module holds the routes and the
key check; requests are read in :mod:`.parsing`, videos fetched in :mod:`.media`, batched in :mod:`.service`, and
answered by :mod:`.responses`. What the server refuses, and why: docs/serving_security.md.
"""

import asyncio
import os
import secrets
import shutil
import time
from contextlib import asynccontextmanager, suppress
from typing import Annotated, Any

import httpx
import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.security.http import HTTPAuthorizationCredentials, HTTPBearer
from llamafactory.extras import logging
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..hparams.serving_args import ActionServingArguments
from ..inference import ActionClassifier
from .media import MediaPolicy, describe_url, make_temp_dir
from .parsing import (
    BodySizeLimit,
    BodyTooLarge,
    InputError,
    body_too_large,
    read_request,
    reserved_tokens,
    videos_and_prompt,
)
from .protocol import ClassificationRequest, error_body
from .responses import HeadInfo, classification_body, client_message, input_error
from .service import ClassifierService, VideoLimits


logger = logging.get_logger(__name__)

CLASSIFIER_ONLY = "this model is a classifier; use /v1/classify"


def _key_matches(credentials: str, api_key: str) -> bool:
    r"""Constant-time comparison of the bytes: the header as received (latin-1), the key as configured (UTF-8)."""
    return secrets.compare_digest(credentials.encode("latin-1", "replace"), api_key.encode("utf-8"))


async def _until_disconnected(request: Request) -> None:
    r"""Returns when the client goes away (once the body is read, the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _document_body(app: FastAPI, definitions: dict[str, Any]) -> None:
    r"""Add the request body's sub-models to /docs: the route reads its body itself (off the event loop)."""
    default = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            default().setdefault("components", {}).setdefault("schemas", {}).update(definitions)
        return app.openapi_schema

    app.openapi = openapi


def create_action_app(classifier: ActionClassifier, settings: ActionServingArguments, model_name: str) -> FastAPI:
    r"""The app serving ``classifier``, whose weights load here after the decode workers are forked.

    A classifier from :meth:`ActionClassifier.reader` has none yet: the workers hold none of them.
    """
    temp_dir = make_temp_dir()
    policy = MediaPolicy(
        allowed_local_media_path=settings.allowed_local_media_path,
        allowed_media_domains=settings.allowed_media_domains,
        max_video_bytes=int(settings.api_max_video_mb * 2**20),
        fetch_timeout=settings.api_fetch_timeout,
        temp_dir=temp_dir,
        max_fetches=settings.api_max_concurrent_fetches,
    )
    service = ClassifierService(
        classifier,
        max_batch_size=settings.api_max_batch_size,
        max_wait_ms=settings.api_max_wait_ms,
        decode_workers=settings.api_decode_workers,
        decode_processes=settings.api_decode_processes,
        limits=VideoLimits(settings.api_max_video_seconds, settings.api_max_frame_pixels),
    )
    classifier.load_model()
    head = HeadInfo(classifier.names, classifier.model.problem_type, classifier.model.threshold)
    reserved = reserved_tokens(classifier.encoder.tokenizer, classifier.encoder.template)
    max_body = int(settings.api_max_body_mb * 2**20)
    http_client: dict[str, httpx.AsyncClient] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        http_client["client"] = httpx.AsyncClient(follow_redirects=False, trust_env=False)
        yield
        await http_client["client"].aclose()
        await service.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)

    app = FastAPI(lifespan=lifespan, root_path=os.getenv("FASTAPI_ROOT_PATH", ""))
    app.state.service = service
    app.add_middleware(BodySizeLimit, max_bytes=max_body)
    app.add_middleware(  # as LLaMA-Factory's API: web pages may call it (the key still guards every route)
        CORSMiddleware, allow_origins=["*"], allow_credentials=True, allow_methods=["*"], allow_headers=["*"]
    )
    api_key = os.getenv("API_KEY")
    security = HTTPBearer(auto_error=False)

    async def verify_api_key(auth: Annotated[HTTPAuthorizationCredentials | None, Depends(security)]):
        r"""LLaMA-Factory's API key check, compared in constant time."""
        if api_key and (auth is None or not _key_matches(auth.credentials, api_key)):
            raise HTTPException(status_code=status.HTTP_401_UNAUTHORIZED, detail="Invalid API key.")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        return JSONResponse(error_body(str(err.detail), err.status_code), err.status_code, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def malformed_body(request: Request, err: RequestValidationError):
        causes = "; ".join(": ".join(filter(None, [".".join(map(str, e["loc"])), e["msg"]])) for e in err.errors())
        return JSONResponse(error_body(f"malformed request body: {client_message(causes, '')}", 400), 400)

    @app.exception_handler(BodyTooLarge)
    async def body_too_large_handler(request: Request, err: BodyTooLarge):
        return body_too_large(max_body)

    @app.exception_handler(InputError)
    async def bad_input(request: Request, err: InputError):
        return JSONResponse(error_body(str(err), err.status), err.status)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models", dependencies=[Depends(verify_api_key)])
    async def list_models():
        card = {
            "id": model_name,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "owner",
            "task": "classify",
            "num_classes": len(head.names),
            "class_names": head.names,
        }
        return {"object": "list", "data": [card]}

    async def classify_one(url: str | InputError, prompt: str, index: int, request: ClassificationRequest, owner):
        if isinstance(url, InputError):
            return url

        description = f"input {index} ({describe_url(url)})"
        path, temporary = None, False
        try:
            path, temporary = await policy.to_file(url, http_client["client"])
            sampling = service.variant(request.video_fps, request.video_maxlen)
            if request.test_clips == 1 and request.window is None:
                return await service.classify(sampling, path, prompt, owner)
            return await service.classify_windows(sampling, path, prompt, owner, request)
        except Exception as err:  # noqa: BLE001  (one input's failure is its own result)
            return input_error(err, description, describe_url(url), path)
        finally:
            if temporary and path:
                os.remove(path)

    async def classify(request: Request):
        body = await read_request(request)
        videos, prompt = videos_and_prompt(body, reserved, settings.api_max_items_per_request)
        owner = id(request)
        work = asyncio.gather(*(classify_one(url, prompt, i, body, owner) for i, url in enumerate(videos)))
        watcher = asyncio.ensure_future(_until_disconnected(request))
        try:
            await asyncio.wait([work, watcher], return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
        if not work.done():  # the client went away: its videos still waiting are dropped
            work.cancel()
            with suppress(asyncio.CancelledError):
                await work
            return JSONResponse(error_body("the client closed the connection.", 499), 499)

        code, content = classification_body(work.result(), head, body.top_k, model_name, body.segment_threshold)
        return JSONResponse(content, code)

    body_schema = ClassificationRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    _document_body(app, body_schema.pop("$defs", {}))
    request_schema = {"requestBody": {"content": {"application/json": {"schema": body_schema}}, "required": True}}
    for route in ("/v1/classify", "/classify"):
        app.post(route, dependencies=[Depends(verify_api_key)], openapi_extra=request_schema)(classify)

    async def not_a_generator():
        return JSONResponse(error_body(CLASSIFIER_ONLY, 400), 400)

    for route in ("/v1/chat/completions", "/v1/completions", "/v1/score/evaluation"):
        app.post(route, dependencies=[Depends(verify_api_key)])(not_a_generator)

    return app


def build_action_app(args: dict[str, Any]) -> FastAPI:
    r"""The app of LLaMA-Factory-style ``args`` (completed from the head's config): decode workers, then weights."""
    args = dict(args)
    model_name_or_path = args.pop("model_name_or_path")
    adapter = args.pop("adapter_name_or_path", None)
    classifier = ActionClassifier.reader(
        model_name_or_path, adapter=adapter, action_decoder_path=args.pop("action_decoder_path", None), **args
    )
    model_name = os.getenv("API_MODEL_NAME") or os.path.basename(os.path.normpath(adapter or model_name_or_path))
    return create_action_app(classifier, classifier.finetuning_args, model_name)


def run_action_api(args: dict[str, Any]) -> None:
    r"""Serve :func:`build_action_app`'s app on ``API_HOST``:``API_PORT``."""
    app = build_action_app(args)
    api_host = os.getenv("API_HOST", "0.0.0.0")
    api_port = int(os.getenv("API_PORT", "8000"))
    print(f"Visit http://localhost:{api_port}/docs for API document.")
    uvicorn.run(app, host=api_host, port=api_port)
