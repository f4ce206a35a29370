"""Every shell block of the READMEs runs as written on a CPU, or is marked with why it cannot.

A block is preceded by one marker in the page source: ``<!-- cpu-test -->`` (run here, in order, in one temporary
copy of the repository's demo files, as a newcomer would after ``make demo``), ``<!-- cpu-test: background -->``
(a server: started, left running for the blocks after it, stopped at the end), ``<!-- needs-gpu: why -->`` or
``<!-- needs-download: why -->`` (skipped with that reason). A newcomer without the Hub model uses the demo's: every
Hub id below is replaced by the tiny Qwen2-VL that ``scripts/run_demo.py`` builds, in the commands and in the
example YAMLs. Training commands are capped at ``MAX_STEPS`` (the demo's 1,080 steps would take minutes), one logging
interval of the examples, so ``plot_loss`` still has a loss to draw.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, free_port, wait_for_http


READMES = ("README.md", "README_zh.md")
SHELL_FENCE = re.compile(r"^```(bash|sh|shell|console)\s*$")
MARKER = re.compile(r"^<!-- (cpu-test(?:: background)?|needs-gpu: .+|needs-download: .+) -->$")
RESPONSE_MARKER = "<!-- response of the block above -->"
HUB_MODELS = ("Qwen/Qwen2-VL-2B-Instruct", "Qwen/Qwen2-VL-7B-Instruct")
DEMO_MODEL = "output/demo/tiny_qwen2vl"
MAX_STEPS = 20  # the largest logging_steps of the examples (the demo's): a logged loss, so training_loss.png is drawn


@dataclass
class Block:
    readme: str
    line: int
    marker: str
    commands: list[str]
    response: str | None  # the JSON block documented as this block's output

    @property
    def id(self) -> str:
        return f"{self.readme}:{self.line}"


def _commands(text: str) -> list[str]:
    r"""The block's commands: continuation lines joined, comments (translated in README_zh.md) left out."""
    joined = re.sub(r"\\\n\s*", "", text)
    commands = []
    for line in joined.splitlines():
        line = re.sub(r"(^|\s+)#\s.*$", "", line).strip()
        if line:
            commands.append(re.sub(r"\s+", " ", line))
    return commands


def shell_blocks(readme: str) -> list[Block]:
    lines = (REPO / readme).read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if not SHELL_FENCE.match(lines[i]):
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.match(before)
        assert marker, f"{readme}:{i + 1}: mark this shell block with <!-- cpu-test --> or <!-- needs-...: why -->"
        response = None
        after = [j for j in range(end + 1, len(lines)) if lines[j].strip()]
        if after and lines[after[0]] == RESPONSE_MARKER:
            start = after[1] + 1
            close = next(j for j in range(start, len(lines)) if lines[j].strip() == "```")
            response = "\n".join(lines[start:close])
        blocks.append(Block(readme, i + 1, marker.group(1), _commands("\n".join(lines[i + 1 : end])), response))
        i = end + 1
    return blocks


@pytest.mark.parametrize("readme", READMES)
def test_every_shell_block_is_marked(readme):
    blocks = shell_blocks(readme)  # raises on an unmarked block
    assert sum(block.marker.startswith("cpu-test") for block in blocks) >= 5


def test_both_readmes_carry_the_same_commands():
    def commands(readme: str) -> list[tuple[str, list[str]]]:
        return [(block.marker.split(":")[0], block.commands) for block in shell_blocks(readme)]

    assert commands("README.md") == commands("README_zh.md")


def _as_newcomer(text: str) -> str:
    for hub_model in HUB_MODELS:
        text = text.replace(hub_model, DEMO_MODEL)
    return text


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    r"""A copy of what a clone holds for the commands (data and examples copied, code linked), and the servers."""
    root = tmp_path_factory.mktemp("readme")
    shutil.copytree(REPO / "data", root / "data")
    for name in ("scripts", "src", "benchmarks"):
        (root / name).symlink_to(REPO / name)
    for path in (REPO / "examples").rglob("*"):
        if path.is_file():
            target = root / path.relative_to(REPO)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(_as_newcomer(path.read_text(encoding="utf-8")), encoding="utf-8")
    if (Path(sys.prefix) / "bin" / "activate").is_file():
        (root / ".venv").symlink_to(sys.prefix)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    state = {"root": root, "env": env, "port": str(free_port()), "servers": [], "outputs": {}}
    yield state
    for server in state["servers"]:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def _capped(command: str) -> str:
    r"""Training commands with a step cap, in the form the command uses for its other options."""
    words = command.split()
    trains = words[:2] == ["llamafactory-cli", "train"] or (words[:2] == ["python", "scripts/run_demo.py"])
    if not trains or "do_train=false" in words:
        return command
    flags_only = len(words) > 2 and words[2].startswith("--")
    return f"{command} --max_steps {MAX_STEPS}" if flags_only else f"{command} max_steps={MAX_STEPS}"


def _same_shape(documented, actual, where: str = "response") -> None:
    if isinstance(documented, dict):
        assert isinstance(actual, dict) and set(documented) == set(actual), f"{where}: {documented} vs {actual}"
        for key in documented:
            _same_shape(documented[key], actual[key], f"{where}.{key}")
    elif isinstance(documented, list) and documented:
        assert isinstance(actual, list) and len(actual) == len(documented), f"{where}: {documented} vs {actual}"
        for i, (doc, act) in enumerate(zip(documented, actual)):
            _same_shape(doc, act, f"{where}[{i}]")
    else:
        assert type(documented) is type(actual), f"{where}: {documented!r} vs {actual!r}"


def _check_documented_response(block: Block, stdout: str) -> None:
    documented = json.loads(block.response)
    actual = json.loads(stdout)
    _same_shape(documented, actual)
    for key in ("object", "model", "usage"):
        assert documented[key] == actual[key], f"README says {key}={documented[key]!r}, the demo gives {actual[key]!r}"
    for doc, act in zip(documented["data"], actual["data"]):
        assert (doc["num_classes"], doc["label"] is None) == (act["num_classes"], act["label"] is None), act


@pytest.mark.parametrize("block", shell_blocks("README.md"), ids=lambda block: block.id)
def test_readme_block_runs_on_cpu(block, workspace):
    if not block.marker.startswith("cpu-test"):
        pytest.skip(block.marker)

    root, env = workspace["root"], workspace["env"]
    script = "\n".join(_capped(_as_newcomer(command)) for command in block.commands).replace("8000", workspace["port"])
    if block.marker == "cpu-test: background":
        log = root / f"server_{block.line}.log"
        server = subprocess.Popen(  # its own process group: bash and the server it starts are stopped together
            ["bash", "-c", script],
            cwd=root,
            env=env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        workspace["servers"].append(server)
        wait_for_http(f"http://127.0.0.1:{workspace['port']}/health", server, log, timeout=300)
        return

    result = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", script], check=False, cwd=root, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, f"{block.id}\n{script}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    assert "Traceback" not in result.stderr, result.stderr[-6000:]
    assert "gemm_4bit_forward" not in result.stderr  # no start-up noise from bitsandbytes
    if block.response is not None:
        _check_documented_response(block, result.stdout)
    for command in block.commands:
        output_dir = _training_output_dir(_as_newcomer(command), root)
        if output_dir:  # every training command of the README plots its loss
            assert (root / output_dir / "training_loss.png").is_file(), f"{command}: plot_loss drew nothing"


def _training_output_dir(command: str, root: Path) -> str | None:
    r"""Where a training command of the README writes (its flags, its YAML, or the demo's), or None."""
    if _capped(command) == command:
        return None
    words = command.split()
    if words[1] == "scripts/run_demo.py":
        return "output/demo/action_cls"
    if words[2].startswith("--"):
        return words[words.index("--output_dir") + 1]
    overrides = dict(word.split("=", 1) for word in words[3:] if "=" in word)
    return overrides.get("output_dir") or yaml.safe_load((root / words[2]).read_text())["output_dir"]
