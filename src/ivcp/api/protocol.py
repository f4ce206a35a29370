"""Request and response bodies of the classification API, shaped like vLLM's ``/classify``.

The chat form reuses LLaMA-Factory's ``ChatMessage`` (whose content items accept ``video_url``); the batch form's
``input`` is a list of videos, each a URL string or the same ``{"type": "video_url", ...}`` item.
"""

from typing import Any, Literal

from llamafactory.api.protocol import ChatMessage, MultimodalInputItem
from pydantic import BaseModel, Field

from ..model.decoding import CLIP_COMBINATIONS


MAX_VIDEO_FPS = 240.0  # more than any camera records; the samples are capped by video_maxlen anyway
MAX_CLIPS = 64  # clips or timeline windows of one video: each is a forward pass


class ClassificationRequest(BaseModel):
    model: str | None = None
    input: list[str | MultimodalInputItem] | str | MultimodalInputItem | None = None
    messages: list[ChatMessage] | None = None
    top_k: int = Field(default=5, ge=1)
    video_fps: float | None = Field(default=None, gt=0, le=MAX_VIDEO_FPS, allow_inf_nan=False)
    video_maxlen: int | None = Field(default=None, ge=1)
    # long videos (docs/long_videos.md): N clips combined, or a timeline of windows (seconds)
    test_clips: int = Field(default=1, ge=1, le=MAX_CLIPS)
    clip_combine: Literal[CLIP_COMBINATIONS] = "mean"
    window: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    stride: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    segment_threshold: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)
    user: str | None = None


class ClassProbability(BaseModel):
    class_id: int = Field(alias="class")
    name: str
    probability: float

    model_config = {"populate_by_name": True}


class ClassificationData(BaseModel):
    index: int
    object: Literal["classify"] = "classify"
    label: str | None = None
    probs: list[float] | None = None
    num_classes: int
    # the decoded result (ivcp.model.decoding): the top-k classes, or every class at or above a multi-label threshold
    predicted: int | list[int] | None = None
    name: str | None = None
    names: list[str] | None = None
    classes: list[ClassProbability] | None = None
    timeline: dict[str, Any] | None = None  # with `window`: ivcp.model.timeline.timeline_result's
    error: dict[str, Any] | None = None


class ClassificationUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int
    completion_tokens: int = 0


class ClassificationResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[ClassificationData]
    usage: ClassificationUsage


def error_body(message: str, status: int, inputs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    r"""The error shape of vLLM (``object: error``), with the per-input errors of a batch when there are several."""
    body = {"object": "error", "message": message, "type": _ERROR_TYPES.get(status, "BadRequestError"), "code": status}
    if inputs:
        body["errors"] = inputs
    return body


_ERROR_TYPES = {
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    408: "TimeoutError",
    413: "RequestTooLargeError",
    415: "UnsupportedMediaTypeError",
    422: "UnprocessableEntityError",
    500: "InternalServerError",
}
