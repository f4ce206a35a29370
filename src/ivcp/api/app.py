"""``llamafactory-cli api`` for ``stage: action_cls``: a FastAPI app shaped like vLLM's classification API.

LLaMA-Factory's ``run_api`` loads every model through ``ChatModel``, which knows generation and value heads only;
``ivcp.integration`` sends action classifiers here instead. Same conventions as upstream's API: ``API_HOST``,
``API_PORT``, ``API_KEY`` (a bearer key on every route but ``/health``), ``API_MODEL_NAME``, ``FASTAPI_ROOT_PATH``.
One process serves one model; run several behind a load balancer to scale out.
"""

import asyncio
import os
import secrets
import shutil
import tempfile
import time
import uuid
from contextlib import asynccontextmanager
from typing import Annotated, Any

import httpx
import torch
import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.security.http import HTTPAuthorizationCredentials, HTTPBearer
from llamafactory.extras import logging

from .. import DEFAULT_PROMPT
from ..data.context import ActionDataError
from ..hparams.serving_args import ActionServingArguments
from ..inference import ActionClassifier
from ..model.action_decoder import ACTION_TOKEN
from ..model.multi_label import MULTI_LABEL, decode_multi_label
from ..train.action_cls.metric import rank_classes
from .media import MediaError, MediaPolicy, describe_url
from .protocol import ClassificationData, ClassificationRequest, ClassificationResponse, error_body
from .service import ClassifierService


logger = logging.get_logger(__name__)

CLASSIFIER_ONLY = "this model is a classifier; use /v1/classify"
ACTION_DATA_STATUS = {"video missing": 404, "processing failed": 422}


class BodySizeLimit:
    r"""ASGI middleware: a request body over ``max_bytes`` (declared or streamed) gets a 413 before it is read."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send)

        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise _BodyTooLarge()
            return message

        await self.app(scope, limited_receive, send)

    async def _refuse(self, send) -> None:
        response = _body_too_large(self.max_bytes)
        await send({"type": "http.response.start", "status": 413, "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body})


class _BodyTooLarge(HTTPException):
    r"""Raised while the body streams in; an HTTPException so that FastAPI's body parsing lets it through."""

    def __init__(self) -> None:
        super().__init__(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)


def _body_too_large(max_bytes: int) -> JSONResponse:
    return JSONResponse(
        error_body(f"the request body is larger than api_max_body_mb ({max_bytes / 2**20:g} MB).", 413), 413
    )


class InputError(Exception):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _input_error(err: Exception, description: str, temp_path: str | None) -> InputError:
    r"""A client-facing error naming the input (never a server temp path) and the cause."""
    if isinstance(err, MediaError):
        return InputError(f"{description}: {err}", err.status)

    if isinstance(err, ActionDataError):
        message = str(err).replace(temp_path, description) if temp_path else str(err)
        return InputError(f"{description}: {message}", ACTION_DATA_STATUS.get(err.kind, 400))

    logger.exception(f"Classifying {description} failed.", exc_info=err)
    return InputError(f"{description}: internal error ({type(err).__name__}).", 500)


def _videos_and_prompt(request: ClassificationRequest) -> tuple[list[Any], str]:
    r"""The requested videos (URL strings, or an error per unusable item) and the prompt of the chat form."""
    if (request.messages is None) == (request.input is None):
        raise InputError("give either `messages` (chat form) or `input` (a list of videos).", 400)

    if request.input is not None:
        items = request.input if isinstance(request.input, list) else [request.input]
        if not items:
            raise InputError("`input` is empty.", 400)
        return [_item_url(item, f"input {i}") for i, item in enumerate(items)], DEFAULT_PROMPT

    videos, texts = [], []
    for message in request.messages:
        if message.role != "user":
            continue
        for item in [message.content] if isinstance(message.content, str) else message.content or []:
            if isinstance(item, str) or item.type == "text":
                texts.append(item if isinstance(item, str) else item.text or "")
            else:
                videos.append(_item_url(item, f"message item {len(videos)}"))

    if len(videos) != 1:
        raise InputError(f"the chat form takes one video_url per request, got {len(videos)}.", 400)

    text = " ".join(text for text in texts if text).strip()
    if any(token in text for token in ("<video>", "<image>", "<audio>", ACTION_TOKEN)):
        raise InputError(
            f"the text may not hold <video>, <image>, <audio> or {ACTION_TOKEN}: the server adds them.", 400
        )

    return videos, f"<video>{text}{ACTION_TOKEN}" if text else DEFAULT_PROMPT


def _item_url(item: Any, description: str) -> str | InputError:
    if isinstance(item, str):
        return item
    if item.type == "video_url" and item.video_url is not None:
        return item.video_url.url
    return InputError(f"{description}: a {item.type!r} item; this model classifies videos (video_url).", 400)


def create_action_app(classifier: ActionClassifier, settings: ActionServingArguments, model_name: str) -> FastAPI:
    temp_dir = tempfile.mkdtemp(prefix="ivcp-api-")
    policy = MediaPolicy(
        allowed_local_media_path=settings.allowed_local_media_path,
        allowed_media_domains=settings.allowed_media_domains,
        max_video_bytes=int(settings.api_max_video_mb * 2**20),
        fetch_timeout=settings.api_fetch_timeout,
        temp_dir=temp_dir,
    )
    service = ClassifierService(
        classifier,
        max_batch_size=settings.api_max_batch_size,
        max_wait_ms=settings.api_max_wait_ms,
        decode_workers=settings.api_decode_workers,
        decode_processes=settings.api_decode_processes,
        max_video_seconds=settings.api_max_video_seconds,
    )
    num_classes = len(classifier.names)
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
    app.add_middleware(BodySizeLimit, max_bytes=int(settings.api_max_body_mb * 2**20))
    app.add_middleware(  # as LLaMA-Factory's API: web pages may call it (the key still guards every route)
        CORSMiddleware, allow_origins=["*"], allow_credentials=True, allow_methods=["*"], allow_headers=["*"]
    )
    api_key = os.getenv("API_KEY")
    security = HTTPBearer(auto_error=False)

    async def verify_api_key(auth: Annotated[HTTPAuthorizationCredentials | None, Depends(security)]):
        r"""LLaMA-Factory's API key check, compared in constant time."""
        if api_key and (auth is None or not secrets.compare_digest(auth.credentials, api_key)):
            raise HTTPException(status_code=status.HTTP_401_UNAUTHORIZED, detail="Invalid API key.")

    @app.exception_handler(RequestValidationError)
    async def malformed_body(request: Request, err: RequestValidationError):
        causes = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        return JSONResponse(error_body(f"malformed request body: {causes}", 400), 400)

    @app.exception_handler(_BodyTooLarge)
    async def body_too_large(request: Request, err: _BodyTooLarge):
        return _body_too_large(int(settings.api_max_body_mb * 2**20))

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
            "num_classes": num_classes,
            "class_names": classifier.names,
        }
        return {"object": "list", "data": [card]}

    async def classify_one(url: str | InputError, prompt: str, index: int, request: ClassificationRequest):
        if isinstance(url, InputError):
            raise url

        description = f"input {index} ({describe_url(url)})"
        path, temporary = None, False
        try:
            path, temporary = await policy.to_file(url, http_client["client"])
            sampling = service.variant(request.video_fps, request.video_maxlen)
            return await service.classify(sampling, path, prompt)
        except Exception as err:  # one input's failure is its own result
            raise _input_error(err, description, path if temporary else None) from err
        finally:
            if temporary and path:
                os.remove(path)

    def as_data(index: int, outcome: Any, top_k: int) -> ClassificationData:
        if isinstance(outcome, InputError):
            return ClassificationData(
                index=index, num_classes=num_classes, error=error_body(str(outcome), outcome.status)
            )

        logits, _ = outcome
        if classifier.model.problem_type == MULTI_LABEL:  # the head's own rule: sigmoid, classes >= threshold
            chosen = decode_multi_label(logits[None], classifier.model.threshold, classifier.names)[0]
            return ClassificationData(
                index=index,
                label=chosen[0]["name"] if chosen else None,
                probs=logits.float().sigmoid().tolist(),
                num_classes=num_classes,
                labels=[{"class": c["class"], "label": c["name"], "probability": c["probability"]} for c in chosen],
            )

        probabilities = torch.softmax(logits.float(), dim=-1)
        top = rank_classes(logits[None], top_k, classifier.names)[0]
        return ClassificationData(
            index=index,
            label=classifier.names[int(probabilities.argmax())],
            probs=probabilities.tolist(),
            num_classes=num_classes,
            top_k=[{"class": c["class"], "label": c["name"], "probability": c["probability"]} for c in top],
        )

    async def classify(request: ClassificationRequest):
        videos, prompt = _videos_and_prompt(request)
        outcomes = await asyncio.gather(
            *(classify_one(url, prompt, i, request) for i, url in enumerate(videos)), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, InputError):
                raise outcome

        failed = [outcome for outcome in outcomes if isinstance(outcome, InputError)]
        if len(failed) == len(outcomes):  # nothing to return: the request itself fails, naming every input
            inputs = [error_body(str(err), err.status) for err in failed]
            message = str(failed[0]) if len(failed) == 1 else f"all {len(failed)} inputs failed: {failed[0]}"
            return JSONResponse(
                error_body(message, failed[0].status, inputs if len(failed) > 1 else None), failed[0].status
            )

        tokens = sum(outcome[1] for outcome in outcomes if not isinstance(outcome, InputError))
        return ClassificationResponse(
            id=f"classify-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=model_name,
            data=[as_data(i, outcome, request.top_k) for i, outcome in enumerate(outcomes)],
            usage={"prompt_tokens": tokens, "total_tokens": tokens},
        ).model_dump(by_alias=True, exclude_none=True)

    for route in ("/v1/classify", "/classify"):
        app.post(route, dependencies=[Depends(verify_api_key)])(classify)

    async def not_a_generator():
        return JSONResponse(error_body(CLASSIFIER_ONLY, 400), 400)

    for route in ("/v1/chat/completions", "/v1/completions", "/v1/score/evaluation"):
        app.post(route, dependencies=[Depends(verify_api_key)])(not_a_generator)

    return app


def run_action_api(args: dict[str, Any]) -> None:
    r"""Load the classifier from LLaMA-Factory-style ``args`` (completed from the head's config) and serve it."""
    args = dict(args)
    model_name_or_path = args.pop("model_name_or_path")
    adapter = args.pop("adapter_name_or_path", None)
    classifier = ActionClassifier.from_pretrained(
        model_name_or_path, adapter=adapter, action_decoder_path=args.pop("action_decoder_path", None), **args
    )
    settings = classifier.finetuning_args
    model_name = os.getenv("API_MODEL_NAME") or os.path.basename(os.path.normpath(adapter or model_name_or_path))
    app = create_action_app(classifier, settings, model_name)
    api_host = os.getenv("API_HOST", "0.0.0.0")
    api_port = int(os.getenv("API_PORT", "8000"))
    print(f"Visit http://localhost:{api_port}/docs for API document.")
    uvicorn.run(app, host=api_host, port=api_port)
