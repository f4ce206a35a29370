"""What a classification request asks for: its videos and prompt, checked before any of it reaches the model.

Everything here is about the client's bytes: the body size limit (an ASGI middleware, so a large body is refused
before it is read), the item count, and the text of the chat form, which may not hold any token the template or the
tokenizer gives a meaning (``<|im_end|><|im_start|>system`` would forge a turn, ``<|video_pad|>`` would break the
batch's video token count). The forbidden tokens come from the served tokenizer and template, not a hand list.
"""

import asyncio
import json
from typing import Any

from fastapi import HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from llamafactory.extras.constants import AUDIO_PLACEHOLDER, IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER
from pydantic import ValidationError

from ..constants import DEFAULT_PROMPT
from ..data.prompt import wrap_question
from ..model.action_decoder import ACTION_TOKEN
from .protocol import ClassificationRequest, error_body


class InputError(Exception):
    r"""A request (or one of its videos) the server will not classify; ``status`` is the HTTP status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


async def read_request(request: Request) -> ClassificationRequest:
    r"""The body, parsed and validated in a thread rather than on the event loop.

    (The JSON parser holds the GIL for its one call: a 60 MB body still pauses the loop for that long.)
    """
    body = await request.body()
    try:
        return await asyncio.to_thread(_parse, body)
    except ValidationError as err:
        raise RequestValidationError(err.errors(include_url=False, include_input=False)) from None
    except ValueError as err:  # not JSON, or not UTF-8
        raise RequestValidationError([{"loc": (), "msg": f"not JSON ({err})"}]) from None


def _parse(body: bytes) -> ClassificationRequest:
    return ClassificationRequest.model_validate(json.loads(body))


def reserved_tokens(tokenizer: Any, template: Any) -> tuple[str, ...]:
    r"""Every string client text may not hold, longest first.

    They are the tokenizer's special and added tokens (role markers, media pads, ``<ACTION>``), the template's stop
    words and media tokens, and LLaMA-Factory's media placeholders.
    """
    plugin = template.mm_plugin
    tokens = {
        *tokenizer.all_special_tokens,
        *(token.content for token in tokenizer.added_tokens_decoder.values()),
        *template.stop_words,
        plugin.image_token,
        plugin.video_token,
        plugin.audio_token,
        IMAGE_PLACEHOLDER,
        VIDEO_PLACEHOLDER,
        AUDIO_PLACEHOLDER,
        ACTION_TOKEN,
    }
    return tuple(sorted((token for token in tokens if token), key=lambda token: (-len(token), token)))


def videos_and_prompt(
    request: ClassificationRequest, reserved: tuple[str, ...], max_items: int
) -> tuple[list[str | InputError], str]:
    r"""The requested videos (URL strings, or an error per unusable item) and the prompt of the chat form."""
    if (request.messages is None) == (request.input is None):
        raise InputError("give either `messages` (chat form) or `input` (a list of videos).", 400)

    if request.input is not None:
        items = request.input if isinstance(request.input, list) else [request.input]
        if not items:
            raise InputError("`input` is empty.", 400)
        if len(items) > max_items:
            raise InputError(
                f"`input` holds {len(items)} videos, more than api_max_items_per_request ({max_items}): split it.", 413
            )
        return [_item_url(item, f"input {i}") for i, item in enumerate(items)], DEFAULT_PROMPT

    videos, texts = [], []
    for message in request.messages:
        contents = [message.content] if isinstance(message.content, str) else message.content or []
        for item in contents:
            text = item if isinstance(item, str) else item.text if item.type == "text" else None
            if text and (token := next((token for token in reserved if token in text), None)):
                raise InputError(f"the text may not hold {token!r}: the template and the server add such tokens.", 400)
            if message.role != "user":
                continue
            if text is not None:
                texts.append(text)
            elif not isinstance(item, str):
                videos.append(_item_url(item, f"message item {len(videos)}"))

    if len(videos) != 1:
        raise InputError(f"the chat form takes one video_url per request, got {len(videos)}.", 400)

    return videos, wrap_question(" ".join(text for text in texts if text))


def _item_url(item: Any, description: str) -> str | InputError:
    if isinstance(item, str):
        return item
    if item.type == "video_url" and item.video_url is not None:
        return item.video_url.url
    return InputError(f"{description}: a {item.type!r} item; this model classifies videos (video_url).", 400)


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
                raise BodyTooLarge()
            return message

        await self.app(scope, limited_receive, send)

    async def _refuse(self, send) -> None:
        response = body_too_large(self.max_bytes)
        await send({"type": "http.response.start", "status": 413, "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body})


class BodyTooLarge(HTTPException):
    r"""Raised while the body streams in; an HTTPException so that FastAPI's body parsing lets it through."""

    def __init__(self) -> None:
        super().__init__(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)


def body_too_large(max_bytes: int) -> JSONResponse:
    return JSONResponse(
        error_body(f"the request body is larger than api_max_body_mb ({max_bytes / 2**20:g} MB).", 413), 413
    )
