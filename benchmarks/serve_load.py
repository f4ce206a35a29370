"""Load test of ``llamafactory-cli api`` serving an action classifier, against ActionClassifier one video at a time.

N concurrent clients on loopback send a bounded number of requests (one video each), so it stops by itself. For
dynamic batching on (``api_max_batch_size``) and off (1), at each concurrency it prints requests/s, p50/p95/p99
latency, and the ratio of requests/s to ``ActionClassifier.predict`` called one video at a time in one process
(same model, same videos, measured in this run). Every response is checked against the class (and probabilities)
that ActionClassifier gives the same video: a lost or mixed-up answer is counted and fails the run.

Both servers run at once and the settings are measured interleaved (``--repeats`` rounds, medians shown), so a
change in background load hits all of them alike. Without ``--model``, it builds a tiny random Qwen2-VL and motion clips and trains a classifier for 2 steps first.

    python benchmarks/serve_load.py                                   # about 6 minutes on 2 busy CPU cores
    python benchmarks/serve_load.py --requests 96 --repeats 3 --concurrency 1 4 16 32 --threads 4
    python benchmarks/serve_load.py --model BASE --adapter OUTPUT_DIR --media_dir DIR --videos a.mp4 b.mp4
"""

import argparse
import http.client
import json
import os
import queue
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx
import psutil
import yaml


def train_tiny_classifier(work_dir: str, threads: int) -> tuple[str, str, str, list[str]]:
    from ivcp.demo.motion_videos import make_motion_dataset, motion_stage_config
    from ivcp.demo.tiny_model import build_tiny_qwen2vl

    model = build_tiny_qwen2vl(os.path.join(work_dir, "model"), seed=0)
    data_dir = os.path.join(work_dir, "data")
    make_motion_dataset(data_dir, num_train_per_class=4, num_test_per_class=4, seed=0)
    output_dir = os.path.join(work_dir, "out")
    config = motion_stage_config(
        model,
        data_dir,
        output_dir,
        finetuning_type="lora",
        lora_target="all",
        per_device_train_batch_size=4,
        max_steps=2,
    )
    config_path = os.path.join(work_dir, "train.yaml")
    with open(config_path, "w", encoding="utf-8") as f:
        yaml.safe_dump(config, f)
    subprocess.run(
        ["llamafactory-cli", "train", config_path], check=True, capture_output=True, env=_env(threads), cwd=work_dir
    )
    with open(os.path.join(data_dir, "motion_test.json"), encoding="utf-8") as f:
        videos = [record["videos"][0] for record in json.load(f)]
    return model, output_dir, data_dir, videos


def _env(threads: int, **extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", **extra}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def load_baseline(args: argparse.Namespace, videos: list[str]):
    r"""The in-process classifier and the result of each video (with every class), which also warms it up."""
    import torch

    from ivcp.inference import ActionClassifier

    torch.set_num_threads(args.threads)
    classifier = ActionClassifier.from_pretrained(args.model, adapter=args.adapter)
    expected = {video: classifier.predict(os.path.join(args.media_dir, video), top_k=100) for video in videos}
    return classifier, expected


def baseline_rate(classifier, args: argparse.Namespace, videos: list[str]) -> tuple[float, float]:
    r"""ActionClassifier.predict one video at a time in this process: videos/s and CPU ms per video."""
    paths = [os.path.join(args.media_dir, video) for video in videos]
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(args.requests):
        classifier.predict(paths[i % len(paths)])
    return args.requests / (time.perf_counter() - start), (time.process_time() - cpu) * 1000 / args.requests


def server_cpu(pid: int) -> float:
    r"""CPU seconds of the server process and of its decode worker processes so far."""
    server = psutil.Process(pid)
    return sum(sum(process.cpu_times()[:2]) for process in [server, *server.children(recursive=True)])


def start_server(args: argparse.Namespace, batch_size: int, work_dir: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    config = {
        "model_name_or_path": args.model,
        "adapter_name_or_path": args.adapter,
        "stage": "action_cls",
        "template": args.template,
        "finetuning_type": "lora" if args.adapter else "full",
        "allowed_local_media_path": args.media_dir,
        "api_max_batch_size": batch_size,
        "api_max_wait_ms": args.max_wait_ms,
        "api_decode_workers": args.decode_workers,
    }
    config_path = os.path.join(work_dir, f"api_{batch_size}.yaml")
    with open(config_path, "w", encoding="utf-8") as f:
        yaml.safe_dump({key: value for key, value in config.items() if value is not None}, f)
    log_path = os.path.join(work_dir, f"server_{batch_size}.log")
    env = _env(args.threads, API_HOST="127.0.0.1", API_PORT=str(port))
    with open(log_path, "w", encoding="utf-8") as log:  # the server keeps its own copy of the descriptor
        process = subprocess.Popen(
            ["llamafactory-cli", "api", config_path], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited; see {log_path}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(1)
    raise SystemExit(f"the server did not start; see {log_path}")


def load(
    server: subprocess.Popen, url: str, videos: list[str], concurrency: int, requests: int, expected: dict[str, dict]
) -> dict:
    r"""``requests`` requests from ``concurrency`` clients; every answer checked against ``expected``.

    Each client is a keep-alive ``http.client`` connection: the clients share the server's cores, and httpx spent
    3 ms of CPU per request here, http.client 0.5 ms.
    """
    address = urlsplit(url)
    clients = [http.client.HTTPConnection(address.hostname, address.port, timeout=600) for _ in range(concurrency)]
    free = queue.SimpleQueue()  # a client per request in flight
    for client in clients:
        free.put(client)

    def call(i: int) -> tuple[float, bool]:
        video = videos[i % len(videos)]
        client = free.get()
        start = time.perf_counter()
        body = json.dumps({"input": [video], "top_k": 1})
        client.request("POST", "/v1/classify", body, {"Content-Type": "application/json"})
        response = client.getresponse()
        answer = response.read()
        latency = time.perf_counter() - start
        free.put(client)
        if response.status != 200:
            return latency, False
        data = json.loads(answer)["data"][0]
        want = expected[video]
        probabilities = {entry["class"]: entry["probability"] for entry in want["classes"]}
        same = data["label"] == want["name"] and all(
            abs(p - probabilities[c]) < 1e-4 for c, p in enumerate(data["probs"])
        )
        return latency, same

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(call, range(concurrency)))  # warm-up: one request per client
        start, cpu, served_cpu = time.perf_counter(), time.process_time(), server_cpu(server.pid)
        outcomes = list(pool.map(call, range(requests)))
        elapsed = time.perf_counter() - start
        client_cpu, served_cpu = time.process_time() - cpu, server_cpu(server.pid) - served_cpu
    for client in clients:
        client.close()
    latencies = [latency * 1000 for latency, _ in outcomes]
    return {
        "requests_per_s": requests / elapsed,
        "p50_ms": statistics.median(latencies),
        "p95_ms": percentile(latencies, 95),
        "p99_ms": percentile(latencies, 99),
        "server_cpu_ms": served_cpu * 1000 / requests,
        "client_cpu_ms": client_cpu * 1000 / requests,
        "wrong_or_lost": sum(not ok for _, ok in outcomes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="base model (with --adapter) or a full/exported classifier")
    parser.add_argument("--adapter", help="output_dir of a LoRA action_cls run")
    parser.add_argument("--template", default="qwen2_vl")
    parser.add_argument("--media_dir", help="folder of the videos (the server's allowed_local_media_path)")
    parser.add_argument("--videos", nargs="*", help="videos relative to --media_dir")
    parser.add_argument("--requests", type=int, default=48, help="timed requests per setting")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--max_batch_size", type=int, default=8, help="api_max_batch_size with batching on")
    parser.add_argument("--max_wait_ms", type=float, default=5.0)
    parser.add_argument("--decode_workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server and of the baseline")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of every setting, interleaved")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ivcp-serve-load-") as work_dir:
        if args.model is None:
            print("Training a tiny classifier (2 steps)...", file=sys.stderr)
            args.model, args.adapter, args.media_dir, args.videos = train_tiny_classifier(work_dir, args.threads)

        classifier, expected = load_baseline(args, args.videos)
        modes = {f"on (max {args.max_batch_size})": args.max_batch_size, "off": 1}
        servers = {mode: start_server(args, batch_size, work_dir) for mode, batch_size in modes.items()}
        rates, results = [], {(mode, c): [] for c in args.concurrency for mode in modes}
        print(f"load average before: {os.getloadavg()[0]:.1f}", file=sys.stderr)
        try:
            for _ in range(args.repeats):  # interleaved, so a change in background load hits every setting alike
                rates.append(baseline_rate(classifier, args, args.videos))
                for concurrency in args.concurrency:
                    for mode in modes:
                        result = load(*servers[mode], args.videos, concurrency, args.requests, expected)
                        results[mode, concurrency].append(result)
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait(timeout=60)
        print(f"load average after: {os.getloadavg()[0]:.1f}", file=sys.stderr)

        rate = statistics.median(rate for rate, _ in rates)
        print(
            f"ActionClassifier.predict, one video at a time: {rate:.2f} videos/s, "
            f"{statistics.median(cpu for _, cpu in rates):.1f} CPU ms per video (median of {args.repeats} x "
            f"{args.requests} videos); each row: median of {args.repeats} x {args.requests} requests; CPU ms per "
            "request of the server (its process and decode workers) and of the load-generating clients"
        )
        print(
            "| batching | concurrency | requests/s | vs one-at-a-time | p50 ms | p95 ms | p99 ms | server CPU ms | "
            "client CPU ms | wrong or lost |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        wrong = 0
        for (mode, concurrency), runs in sorted(results.items(), key=lambda item: (item[0][0] == "off", item[0][1])):
            median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
            wrong += sum(run["wrong_or_lost"] for run in runs)
            print(
                f"| {mode} | {concurrency} | {median['requests_per_s']:.2f} | {median['requests_per_s'] / rate:.2f}x | "
                f"{median['p50_ms']:.0f} | {median['p95_ms']:.0f} | {median['p99_ms']:.0f} | "
                f"{median['server_cpu_ms']:.1f} | {median['client_cpu_ms']:.1f} | "
                f"{sum(run['wrong_or_lost'] for run in runs)} |"
            )

    if wrong:
        raise SystemExit(f"{wrong} responses were wrong or lost")


if __name__ == "__main__":
    main()
