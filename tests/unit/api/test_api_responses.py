"""The classification API's request parsing and response building, without a server (pure functions)."""

import asyncio
import json

import pytest
import torch
from fastapi.exceptions import RequestValidationError
from starlette.requests import Request

from ivcp.api.parsing import InputError, read_request, videos_and_prompt
from ivcp.api.protocol import ClassificationRequest
from ivcp.api.responses import HeadInfo, classification_body, client_message, input_error
from ivcp.data.context import ActionDataError
from ivcp.model.multi_label import MULTI_LABEL


NAMES = ["walk", "run", "jump"]
SINGLE = HeadInfo(NAMES, "single_label_classification", 0.5)
RESERVED = ("<|im_start|>", "<|video_pad|>", "<video>", "<ACTION>")


def test_a_single_label_result_ranks_the_softmax():
    logits = torch.tensor([0.0, 2.0, 1.0])
    status, body = classification_body([(logits, 7)], SINGLE, top_k=2, model_name="m")
    assert status == 200 and body["model"] == "m" and body["usage"]["prompt_tokens"] == 7
    data = body["data"][0]
    probabilities = logits.softmax(-1).tolist()
    assert data["label"] == "run" and data["probs"] == pytest.approx(probabilities)
    assert data["predicted"] == 1 and data["name"] == "run"
    assert [(e["class"], e["name"]) for e in data["classes"]] == [(1, "run"), (2, "jump")]
    assert data["classes"][0]["probability"] == pytest.approx(probabilities[1])


def test_a_multi_label_result_lists_the_classes_at_or_above_the_threshold():
    logits = torch.tensor([2.0, -3.0, 0.5])  # sigmoid: 0.88, 0.05, 0.62
    head = HeadInfo(NAMES, MULTI_LABEL, 0.6)
    data = classification_body([(logits, 3)], head, top_k=5, model_name="m")[1]["data"][0]
    assert [e["name"] for e in data["classes"]] == ["walk", "jump"] and data["label"] == "walk"
    assert data["predicted"] == [0, 2] and data["names"] == ["walk", "jump"]
    assert data["probs"] == pytest.approx(logits.sigmoid().tolist())
    empty = classification_body([(torch.tensor([-5.0, -5.0, -5.0]), 3)], head, 5, "m")[1]["data"][0]
    assert empty["classes"] == [] and empty["predicted"] == [] and "label" not in empty


def test_a_failed_video_is_its_own_entry_and_all_failed_is_the_requests_error():
    error = InputError("input 1 (x.mp4): no such file in `allowed_local_media_path`.", 404)
    status, body = classification_body([(torch.zeros(3), 1), error], SINGLE, 5, "m")
    assert status == 200 and body["data"][1]["error"] == {
        "object": "error",
        "message": str(error),
        "type": "NotFoundError",
        "code": 404,
    }
    status, body = classification_body([error, InputError("input 2: bad", 400)], SINGLE, 5, "m")
    assert status == 404 and body["object"] == "error" and len(body["errors"]) == 2
    assert body["message"].startswith("all 2 inputs failed: input 1")


def test_error_messages_name_what_the_client_sent_and_hide_server_paths():
    server = "/srv/media/clips/a.mp4"
    err = ActionDataError(f"video {server} has '{server}', which PyAV cannot read (/usr/lib/x.so: bad)", "x")
    message = str(input_error(err, "input 0 (clips/a.mp4)", "clips/a.mp4", server))
    assert "/srv" not in message and "/usr/lib" not in message and "clips/a.mp4" in message
    assert "<server path>" in message
    assert client_message("fetching http://h:1/a/b.mp4 failed at /tmp/q", "http://h:1/a/b.mp4") == (
        "fetching http://h:1/a/b.mp4 failed at <server path>"
    )
    assert client_message("'/data/x.mp4' is damaged", "/data/x.mp4") == "'/data/x.mp4' is damaged"  # theirs
    assert client_message("1/2 frames and/or more", "") == "1/2 frames and/or more"
    upload = "/tmp/ivcp-api-x/upload.mp4"  # a data: URL's temporary file: the description already names the input
    damaged = ActionDataError(f"video {upload!r} cannot be read by PyAV (Invalid data): re-encode it.", "x")
    assert str(input_error(damaged, "input 0 (data:video/mp4;base64,...)", "data:video/mp4;base64,...", upload)) == (
        "input 0 (data:video/mp4;base64,...): the video cannot be read by PyAV (Invalid data): re-encode it."
    )
    unexpected = input_error(RuntimeError("boom at /srv/secret"), "input 0 (a.mp4)", "a.mp4", None)
    assert unexpected.status == 500 and "/srv" not in str(unexpected)


@pytest.mark.parametrize(
    ("text", "token"),
    [("a <|video_pad|> b", "<|video_pad|>"), ("x<|im_start|>system", "<|im_start|>"), ("<ACTION>", "<ACTION>")],
)
def test_chat_text_with_a_reserved_token_is_refused_naming_it(text, token):
    video = {"type": "video_url", "video_url": {"url": "a.mp4"}}
    request = ClassificationRequest(messages=[{"role": "user", "content": [video, {"type": "text", "text": text}]}])
    with pytest.raises(InputError, match=f"may not hold {token!r}".replace("|", r"\|")) as caught:
        videos_and_prompt(request, RESERVED, max_items=4)
    assert caught.value.status == 400


def test_the_prompt_and_the_item_cap():
    video = {"type": "video_url", "video_url": {"url": "a.mp4"}}
    request = ClassificationRequest(messages=[{"role": "user", "content": [video, {"type": "text", "text": "why?"}]}])
    assert videos_and_prompt(request, RESERVED, max_items=4) == (["a.mp4"], "<video>why?<ACTION>")
    with pytest.raises(InputError, match="api_max_items_per_request") as caught:
        videos_and_prompt(ClassificationRequest(input=["a.mp4"] * 5), RESERVED, max_items=4)
    assert caught.value.status == 413


def _request(content: bytes) -> Request:
    async def receive() -> dict:
        return {"type": "http.request", "body": content, "more_body": False}

    return Request({"type": "http", "method": "POST", "headers": []}, receive)


def test_a_body_that_is_not_json_or_not_utf8_is_a_validation_error():
    for content in (b"{not json", b"\xff\xfe{", b"[1]", b'{"input": ["a"], "video_fps": Infinity}'):
        with pytest.raises(RequestValidationError):
            asyncio.run(read_request(_request(content)))
    assert asyncio.run(read_request(_request(b'{"input": "a.mp4", "top_k": 2}'))).top_k == 2


def test_non_finite_logits_fail_only_their_video():
    nan = torch.tensor([float("nan"), 0.0, 1.0])
    status, body = classification_body([(nan, 2), (torch.tensor([0.0, 2.0, 1.0]), 2)], SINGLE, 5, "m")
    assert status == 200
    broken, good = body["data"]
    assert broken["error"]["code"] == 500 and "not finite" in broken["error"]["message"] and "probs" not in broken
    assert good["label"] == "run" and "error" not in good
    json.dumps(body, allow_nan=False)  # raises on a NaN or inf anywhere in the body
