"""The bodies the classification API answers with, built from per-video outcomes by pure functions.

An outcome is what the service gives one video: ``(logits, prompt_tokens)``, or the :class:`InputError` that stopped
it. :func:`classification_body` turns a request's outcomes into vLLM's ``/classify`` response (or, when every video
failed, its error); :func:`video_result` is the one place where a row of logits becomes a result. Error messages go
through :func:`client_message`, which names the input as the client sent it and never a server path.
"""

import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import torch
from llamafactory.extras import logging

from ..data.context import ActionDataError
from ..model.decoding import combine_clips, decode, probabilities
from ..model.timeline import timeline_result
from .media import MediaError
from .parsing import InputError
from .protocol import ClassificationData, ClassificationResponse, error_body


logger = logging.get_logger(__name__)

ACTION_DATA_STATUS = {"video missing": 404, "processing failed": 422, "frames too large": 413}
# an absolute path not inside a URL or a word: "/srv/x.mp4", "(/usr/lib/...)", but not "http://h/x" or "1/2"
_SERVER_PATH = re.compile(r"(?<![\w/:.~%-])/[^\s'\"(),;<>\[\]]+")


@dataclass(frozen=True)
class HeadInfo:
    r"""What decoding a row of logits needs to know about the served head."""

    names: list[str]
    problem_type: str
    threshold: float


def client_message(message: str, client_text: str, server_paths: tuple[str, ...] = ()) -> str:
    r"""``message`` with each of ``server_paths`` shown as ``client_text`` and any other absolute path hidden.

    Parts equal to ``client_text`` (what the client sent, a path included) are kept as they are.
    """
    for path in sorted(filter(None, server_paths), key=len, reverse=True):
        message = message.replace(path, client_text)
    parts = message.split(client_text) if client_text else [message]
    return client_text.join(_SERVER_PATH.sub("<server path>", part) for part in parts)


def input_error(err: Exception, description: str, url: str, server_path: str | None) -> InputError:
    r"""A video's failure as the client may see it: the input named, the cause, a 4xx (500 only for a server bug)."""
    if isinstance(err, InputError):
        return err
    if isinstance(err, MediaError):
        return InputError(f"{description}: {client_message(str(err), url)}", err.status)
    if isinstance(err, ActionDataError):  # the description names the input already: the file is "the video"
        message = str(err).replace(f"video {server_path!r}", "the video") if server_path else str(err)
        message = client_message(message, url, (server_path,) if server_path else ())
        return InputError(f"{description}: {message}", ACTION_DATA_STATUS.get(err.kind, 400))

    logger.exception(f"Classifying {description} failed.", exc_info=err)
    return InputError(f"{description}: internal error ({type(err).__name__}).", 500)


def video_result(
    index: int,
    outcome: tuple[torch.Tensor, int] | InputError,
    head: HeadInfo,
    top_k: int,
    segment_threshold: float | None = None,
):
    r"""One video's entry: vLLM's fields beside :func:`ivcp.model.decoding.decode`'s result, or the video's error.

    A timeline's outcome (its windows' logits) adds :func:`ivcp.model.timeline.timeline_result`'s ``timeline``;
    ``label`` and ``probs`` are then those of the whole video (the windows' mean). Non-finite logits (an fp16
    overflow, say) fail only this video, with a 500: the server's model, not the client, is at fault.
    """
    num_classes = len(head.names)
    if isinstance(outcome, InputError):
        return ClassificationData(index=index, num_classes=num_classes, error=error_body(str(outcome), outcome.status))

    value = outcome[0]
    if isinstance(value, torch.Tensor):
        logits = value[None]
        result = decode(logits, head.problem_type, head.threshold, head.names, top_k)[0]
    else:  # a timeline: the whole video's answer is its windows' mean
        logits = combine_clips(value.logits, head.problem_type)[None]
        result = timeline_result(
            value.windows, value.logits, head.problem_type, head.threshold, head.names, top_k, segment_threshold
        )
    if "error" in result:
        return ClassificationData(index=index, num_classes=num_classes, error=error_body(result["error"], 500))

    label = result["name"] if "name" in result else next(iter(result["names"]), None)
    return ClassificationData(
        index=index,
        label=label,
        probs=probabilities(logits, head.problem_type)[0].tolist(),
        num_classes=num_classes,
        **result,
    )


def classification_body(
    outcomes: list[tuple[torch.Tensor, int] | InputError],
    head: HeadInfo,
    top_k: int,
    model_name: str,
    segment_threshold: float | None = None,
) -> tuple[int, dict[str, Any]]:
    r"""(HTTP status, body) of a request: 200 with every video's result or error, or the error when all failed."""
    failed = [outcome for outcome in outcomes if isinstance(outcome, InputError)]
    if len(failed) == len(outcomes):  # nothing to return: the request itself fails, naming every input
        inputs = [error_body(str(err), err.status) for err in failed] if len(failed) > 1 else None
        message = str(failed[0]) if len(failed) == 1 else f"all {len(failed)} inputs failed: {failed[0]}"
        return failed[0].status, error_body(message, failed[0].status, inputs)

    tokens = sum(outcome[1] for outcome in outcomes if not isinstance(outcome, InputError))
    response = ClassificationResponse(
        id=f"classify-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=model_name,
        data=[video_result(i, outcome, head, top_k, segment_threshold) for i, outcome in enumerate(outcomes)],
        usage={"prompt_tokens": tokens, "total_tokens": tokens},
    )
    return 200, response.model_dump(by_alias=True, exclude_none=True)
