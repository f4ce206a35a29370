"""``llamafactory-cli api`` with ``stage: action_cls``: the real server on loopback, called with a real HTTP client.

Two server processes for the whole file: one from a YAML with an API key, tight limits and dynamic batching, one
from command-line flags alone without a key and with batching off.
"""

import base64
import json
import os
import shutil
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import av
import httpx
import numpy as np
import openai
import pytest
from fastapi.testclient import TestClient

from ivcp.api.app import create_action_app
from ivcp.demo.object_videos import make_object_dataset
from ivcp.hparams.serving_args import ActionServingArguments
from ivcp.inference import ActionClassifier

from .conftest import base_config, read_json, run_cli, start_command, write_broken_videos, write_config


API_KEY = "test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
TIMEOUT = 120  # seconds: a loaded 2-core machine answers slowly, never wrongly


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Handler(SimpleHTTPRequestHandler):
    r"""Serves the media folder, plus redirects (same host, other host) and a fetch that never finishes."""

    def do_GET(self):
        if self.path.startswith("/redirect-same/"):
            return self._redirect(self.path.removeprefix("/redirect-same"))
        if self.path.startswith("/redirect-other/"):
            return self._redirect(
                f"http://localhost:{self.server.server_port}{self.path.removeprefix('/redirect-other')}"
            )
        if self.path == "/slow.mp4":  # trickles far longer than api_fetch_timeout
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            try:
                for _ in range(120):
                    self.wfile.write(b"x" * 10)
                    self.wfile.flush()
                    time.sleep(0.5)
            except OSError:  # the server gave up: what the test expects
                pass
            return None
        return super().do_GET()

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def _write_long_video(path: Path, seconds: int) -> None:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=1)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for _ in range(seconds):
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), dtype=np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def _wait_until_up(url: str, process, log: Path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited:\n{log.read_text()[-6000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise AssertionError(f"the server did not come up:\n{log.read_text()[-6000:]}")


@pytest.fixture(scope="module")
def served(tiny_model, motion_data, tmp_path_factory):
    r"""A classifier trained 2 steps with class names, the two servers, and a loopback file server."""
    work_dir = tmp_path_factory.mktemp("api")
    media = work_dir / "media"
    shutil.copytree(motion_data, media)
    names = {
        record["action_label"]: record["conversations"][1]["value"]
        for record in read_json(media / "motion_train.json")
    }
    (work_dir / "names.json").write_text(json.dumps([names[i] for i in range(4)]))
    output_dir = work_dir / "out"
    run_cli(
        base_config(
            tiny_model, motion_data, str(output_dir), max_steps=2, action_label_names=str(work_dir / "names.json")
        ),
        work_dir,
    )

    broken = write_broken_videos(motion_data, media / "broken")
    _write_long_video(media / "long.avi", seconds=30)
    (media / "big.mp4").write_bytes(os.urandom(600 * 1024))
    (work_dir / "outside.mp4").write_bytes(
        (media / read_json(media / "motion_test.json")[0]["videos"][0]).read_bytes()
    )
    (media / "escape.mp4").symlink_to(work_dir / "outside.mp4")

    file_server = ThreadingHTTPServer(("127.0.0.1", 0), lambda *args: _Handler(*args, directory=str(media)))
    threading.Thread(target=file_server.serve_forever, daemon=True).start()

    config = {
        "model_name_or_path": tiny_model,
        "adapter_name_or_path": str(output_dir),
        "stage": "action_cls",
        "template": "qwen2_vl",
        "finetuning_type": "lora",
        "allowed_local_media_path": str(media),
        "allowed_media_domains": ["127.0.0.1"],
        "api_max_batch_size": 4,
        "api_max_wait_ms": 20,
        "api_max_body_mb": 1,
        "api_max_video_mb": 0.5,
        "api_max_video_seconds": 20,
        "api_fetch_timeout": 10,
    }
    flags = [
        *("--model_name_or_path", tiny_model, "--adapter_name_or_path", str(output_dir), "--stage", "action_cls"),
        *("--template", "qwen2_vl", "--finetuning_type", "lora", "--allowed_local_media_path", str(media)),
        *("--api_max_batch_size", "1"),
    ]
    ports = [_free_port(), _free_port()]
    env = {"API_HOST": "127.0.0.1", "OMP_NUM_THREADS": "1"}
    processes = [
        start_command(
            work_dir,
            "llamafactory-cli",
            "api",
            write_config(config, work_dir),
            log_path=work_dir / "server_yaml.log",
            API_PORT=str(ports[0]),
            API_KEY=API_KEY,
            **env,
        ),
        start_command(
            work_dir,
            "llamafactory-cli",
            "api",
            *flags,
            log_path=work_dir / "server_flags.log",
            API_PORT=str(ports[1]),
            **env,
        ),
    ]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        classifier = ActionClassifier.from_pretrained(tiny_model, adapter=str(output_dir))
        for url, process, log in zip(urls, processes, ("server_yaml.log", "server_flags.log")):
            _wait_until_up(url, process, work_dir / log)

        yield {
            "url": urls[0],
            "open_url": urls[1],
            "media": media,
            "work_dir": work_dir,
            "files": f"http://127.0.0.1:{file_server.server_port}",
            "file_port": file_server.server_port,
            "broken": broken,
            "classifier": classifier,
            "names": [names[i] for i in range(4)],
            "test_videos": [record["videos"][0] for record in read_json(media / "motion_test.json")],
        }
    finally:
        file_server.shutdown()
        for process in processes:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)


def _classify(served, body, key=True, url=None):
    return httpx.post(f"{url or served['url']}/v1/classify", json=body, headers=AUTH if key else {}, timeout=TIMEOUT)


def _assert_matches(data, expected, names):
    r"""A server result equals ActionClassifier.predict's for the same video (up to batching's float noise)."""
    assert data["label"] == expected["name"] == names[expected["predicted"]]
    assert data["num_classes"] == 4 and len(data["probs"]) == 4
    for ours in expected["classes"]:
        assert data["probs"][ours["class"]] == pytest.approx(ours["probability"], abs=1e-4)


def _good_request_works(served):
    response = _classify(served, {"input": [served["test_videos"][0]]})
    assert response.status_code == 200, response.text
    assert response.json()["data"][0]["label"] in served["names"]


def test_batch_form_every_url_kind_names_and_top_k(served):
    media, video = served["media"], served["test_videos"][0]
    payload = base64.b64encode((media / video).read_bytes()).decode()
    inputs = [
        video,  # relative to allowed_local_media_path
        str(media / video),
        f"file://{media / video}",
        f"data:video/mp4;base64,{payload}",
        {"type": "video_url", "video_url": {"url": f"{served['files']}/{video}"}},
        f"{served['files']}/redirect-same/{video}",  # a redirect on the same host is followed
    ]
    response = _classify(served, {"model": "whatever", "input": inputs, "top_k": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list" and body["usage"]["prompt_tokens"] > 0
    expected = served["classifier"].predict(str(media / video), top_k=4)
    assert [data["index"] for data in body["data"]] == list(range(len(inputs)))
    for data in body["data"]:
        _assert_matches(data, expected, served["names"])
        assert [entry["label"] for entry in data["top_k"]] == [e["name"] for e in expected["classes"][:2]]
        assert [entry["class"] for entry in data["top_k"]] == [e["class"] for e in expected["classes"][:2]]


def test_chat_form_and_frame_settings(served):
    video = served["test_videos"][1]
    message = {
        "role": "user",
        "content": [
            {"type": "video_url", "video_url": {"url": video}},
            {"type": "text", "text": "What is the person doing?"},
        ],
    }
    response = _classify(served, {"messages": [message]})
    assert response.status_code == 200, response.text
    data = response.json()["data"][0]
    assert len(data["top_k"]) == 4  # default 5, capped by the number of classes
    _assert_matches(data, served["classifier"].predict(str(served["media"] / video)), served["names"])

    other = served["classifier"].with_video_settings(video_fps=4, video_maxlen=4)
    response = _classify(served, {"input": [video], "video_fps": 4, "video_maxlen": 4})
    assert response.status_code == 200, response.text
    _assert_matches(response.json()["data"][0], other.predict(str(served["media"] / video)), served["names"])


def test_models_health_chat_route_and_auth(served):
    url, open_url = served["url"], served["open_url"]
    assert httpx.get(f"{url}/health", timeout=TIMEOUT).status_code == 200  # no key needed
    page = httpx.get(f"{url}/health", headers={"Origin": "http://page.example"}, timeout=TIMEOUT)  # CORS, as upstream
    assert page.headers["access-control-allow-origin"] in ("*", "http://page.example")
    for method, route in [
        ("get", "/v1/models"),
        ("post", "/v1/classify"),
        ("post", "/classify"),
        ("post", "/v1/chat/completions"),
    ]:
        assert httpx.request(method, f"{url}{route}", json={}, timeout=TIMEOUT).status_code == 401
        assert (
            httpx.request(
                method, f"{url}{route}", json={}, headers={"Authorization": "Bearer wrong"}, timeout=TIMEOUT
            ).status_code
            == 401
        )

    models = httpx.get(f"{url}/v1/models", headers=AUTH, timeout=TIMEOUT).json()["data"][0]
    assert models["class_names"] == served["names"] and models["num_classes"] == 4
    chat = httpx.post(f"{url}/v1/chat/completions", json={"messages": []}, headers=AUTH, timeout=TIMEOUT)
    assert chat.status_code == 400 and "this model is a classifier; use /v1/classify" in chat.json()["message"]

    # the server started from flags alone has no key and batching off
    response = httpx.post(f"{open_url}/classify", json={"input": [served["test_videos"][2]]}, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    expected = served["classifier"].predict(str(served["media"] / served["test_videos"][2]))
    _assert_matches(response.json()["data"][0], expected, served["names"])


@pytest.mark.parametrize(
    ("case", "status", "cause"),
    [
        ("empty", 400, "read"),
        ("not-a-video", 400, "read"),
        ("truncated", 400, "read"),
        ("no-decodable-frame", 400, "read"),
        ("audio-only", 400, "no video stream"),
        ("missing", 404, "no such file"),
        ("big", 413, "api_max_video_mb"),
        ("long", 413, "api_max_video_seconds"),
        ("slow", 408, "api_fetch_timeout"),
        ("scheme", 400, "unsupported URL scheme"),
        ("base64", 400, "not valid base64"),
        ("not-video-data", 415, "data:video"),
        ("image-item", 400, "video_url"),
        ("two-videos", 400, "one video_url"),
        ("text-with-token", 400, "<ACTION>"),
        ("no-input", 400, "either `messages`"),
        ("malformed-json", 400, "malformed request body"),
        ("wrong-type", 400, "top_k"),
        ("body-too-large", 413, "api_max_body_mb"),
        ("body-too-large-chunked", 413, "api_max_body_mb"),
        ("nul-byte", 400, "not a valid path"),
    ],
)
def test_bad_input_is_a_4xx_naming_it_and_the_next_request_works(served, case, status, cause):
    broken, files = served["broken"], served["files"]
    video_item = {"type": "video_url", "video_url": {"url": served["test_videos"][0]}}
    inputs = {
        **{name: str(path) for name, path in broken.items()},
        "missing": "nothere.mp4",
        "big": "big.mp4",
        "long": "long.avi",
        "slow": f"{files}/slow.mp4",
        "scheme": "ftp://example.com/a.mp4",
        "base64": "data:video/mp4;base64,@@@@",
        "not-video-data": "data:text/plain;base64,aGVsbG8=",
        "nul-byte": "a\x00b.mp4",
    }
    bodies = {
        "image-item": {"input": [{"type": "image_url", "image_url": {"url": "a.png"}}]},
        "two-videos": {"messages": [{"role": "user", "content": [video_item, video_item]}]},
        "text-with-token": {
            "messages": [{"role": "user", "content": [video_item, {"type": "text", "text": "hi <ACTION>"}]}]
        },
        "no-input": {"top_k": 3},
        "wrong-type": {"input": ["a.mp4"], "top_k": "many"},
    }
    if case == "malformed-json":
        response = httpx.post(
            f"{served['url']}/v1/classify",
            content=b"{not json",
            headers={**AUTH, "Content-Type": "application/json"},
            timeout=TIMEOUT,
        )
    elif case.startswith("body-too-large"):
        body = json.dumps({"input": ["data:video/mp4;base64," + "A" * (2 << 20)]}).encode()
        chunks = (body[i : i + 65536] for i in range(0, len(body), 65536))  # no Content-Length: counted as it streams
        response = httpx.post(
            f"{served['url']}/v1/classify",
            content=body if case == "body-too-large" else chunks,
            headers={**AUTH, "Content-Type": "application/json"},
            timeout=TIMEOUT,
        )
    else:
        response = _classify(served, bodies.get(case) or {"input": [inputs[case]]})

    assert response.status_code == status, response.text
    body = response.json()
    assert body["object"] == "error" and body["code"] == status and cause in body["message"], body
    if case in inputs:
        assert f"input 0 ({inputs[case][:20]}" in body["message"]
        assert "/tmp/" not in body["message"] or inputs[case].startswith("/")  # never a server temp path

    _good_request_works(served)


def test_a_bad_input_costs_a_batch_only_its_own_result(served):
    videos = served["test_videos"][:2]
    response = _classify(served, {"input": [videos[0], str(served["broken"]["not-a-video"]), videos[1]]})
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert "not-a-video.mp4" in data[1]["error"]["message"] and data[1]["error"]["code"] == 400
    for entry, video in zip((data[0], data[2]), videos):
        _assert_matches(entry, served["classifier"].predict(str(served["media"] / video)), served["names"])


@pytest.mark.parametrize(
    ("url_kind", "cause"),
    [
        ("outside-existing", "outside `allowed_local_media_path`"),
        ("outside-missing", "outside `allowed_local_media_path`"),
        ("dotdot", "outside `allowed_local_media_path`"),
        ("symlink", "outside `allowed_local_media_path`"),
        ("file-url-outside", "outside `allowed_local_media_path`"),
        ("unlisted-host", "not in `allowed_media_domains`"),
        ("redirect-other-host", "redirected to another host"),
    ],
)
def test_refusals_reveal_nothing(served, url_kind, cause):
    work_dir, video, port = served["work_dir"], served["test_videos"][0], served["file_port"]
    url = {
        "outside-existing": str(work_dir / "outside.mp4"),
        "outside-missing": str(work_dir / "nothing-here.mp4"),
        "dotdot": "videos/../../outside.mp4",
        "symlink": "escape.mp4",
        "file-url-outside": f"file://{work_dir / 'outside.mp4'}",
        "unlisted-host": f"http://localhost:{port}/{video}",
        "redirect-other-host": f"{served['files']}/redirect-other/{video}",
    }[url_kind]
    response = _classify(served, {"input": [url]})
    assert response.status_code == 403, response.text
    assert cause in response.json()["message"]
    if url_kind.startswith("outside"):  # the same answer whether the file exists or not
        expected = "input 0 (URL): the path is outside `allowed_local_media_path`."
        assert response.json()["message"].replace(url, "URL") == expected
    _good_request_works(served)


def test_concurrent_requests_equal_action_classifier(served):
    videos = served["test_videos"]
    expected = {video: served["classifier"].predict(str(served["media"] / video)) for video in videos}
    requests = [videos[i % len(videos)] for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda video: _classify(served, {"input": [video]}), requests))
    for video, response in zip(requests, responses):
        assert response.status_code == 200, response.text
        _assert_matches(response.json()["data"][0], expected[video], served["names"])


def test_the_openai_client_reaches_classify_through_its_generic_post(served):
    r"""/v1/classify is vLLM's route, not OpenAI's: the ``openai`` client reaches it through ``client.post``."""
    client = openai.OpenAI(base_url=f"{served['url']}/v1", api_key=API_KEY, timeout=TIMEOUT, max_retries=0)
    video = served["test_videos"][1]
    body = client.post("/classify", body={"input": [video], "top_k": 2}, cast_to=object)
    _assert_matches(body["data"][0], served["classifier"].predict(str(served["media"] / video)), served["names"])
    with pytest.raises(openai.BadRequestError, match="use /v1/classify"):
        client.chat.completions.create(model="classifier", messages=[{"role": "user", "content": "hi"}])


def test_a_multi_label_head_answers_the_classes_at_or_above_its_threshold(tiny_model, tmp_path):
    r"""The app in-process (TestClient) on a 2-step multi-label classifier: ``labels`` equal ActionClassifier's."""
    data_dir, output_dir = tmp_path / "data", tmp_path / "out"
    make_object_dataset(str(data_dir), num_train=8, num_test=6, seed=0)
    config = base_config(tiny_model, str(data_dir), str(output_dir), dataset="objects_train", video_fps=2)
    run_cli({**config, "action_problem_type": "multi_label", "max_steps": 2, "save_strategy": "no"}, tmp_path)
    videos = [str(data_dir / record["videos"][0]) for record in read_json(data_dir / "objects_test.json")]
    untrained = ActionClassifier.from_pretrained(tiny_model, adapter=str(output_dir))
    threshold = float(untrained.predict_logits(videos).sigmoid().median())  # some classes above it, some below
    classifier = ActionClassifier.from_pretrained(tiny_model, adapter=str(output_dir), action_threshold=threshold)
    expected = classifier.predict(videos)
    assert 0 < sum(len(result["predicted"]) for result in expected) < len(videos) * len(classifier.names)

    settings = ActionServingArguments(allowed_local_media_path=str(data_dir), api_decode_processes=False)
    with TestClient(create_action_app(classifier, settings, "objects")) as client:  # threads: no fork of pytest
        response = client.post("/v1/classify", json={"input": videos})
    assert response.status_code == 200, response.text
    for data, want in zip(response.json()["data"], expected, strict=True):
        assert [entry["class"] for entry in data["labels"]] == want["predicted"]
        assert [entry["label"] for entry in data["labels"]] == want["names"]
        for ours, theirs in zip(data["labels"], want["classes"]):
            assert ours["probability"] == pytest.approx(theirs["probability"], abs=1e-5)
        assert data["label"] == (want["names"][0] if want["names"] else None)
