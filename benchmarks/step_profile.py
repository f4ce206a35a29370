"""Where a training step's time and a trainer's memory go, for any HF Trainer (IVCP's stage and ms-swift alike).

Only torch, transformers and psutil are imported, so the same callback runs in IVCP's venv and in ms-swift's. It
splits each optimizer step into:

- data: from the end of the previous step to ``on_step_begin`` (HF Trainer fetches the step's batch there: the
  dataloader's work, i.e. video decoding, the processor and the collator when they run in the main process);
- forward: the model's top-level forward (hooks);
- recompute: forwards of gradient-checkpointed layers (``GradientCheckpointingLayer``) that run during backward;
- backward: the rest until ``on_pre_optimizer_step`` (autograd, gradient clipping), recompute excluded;
- optimizer: ``optimizer.step()``; other: zero_grad, the scheduler, callbacks.

Times are CPU seconds of the main thread (``time.thread_time``), not wall time: on a machine shared with other
jobs they measure the work, not the waiting. Run with one torch thread (and the data path in the main process) so
that the main thread does all of it.

:func:`wrap_timed` adds named timers around functions of the data path (decode, processor, collate), and
:func:`memory_holdings` sums parameter, gradient and optimizer-state bytes by part of the model.
"""

import functools
import json
import sys
import time
from collections import defaultdict
from typing import Any

import psutil
import torch
from transformers import TrainerCallback


clock = time.thread_time
TIMERS: dict[str, float] = defaultdict(float)  # name -> seconds, summed over the run (inclusive of nested timers)
PARTS = (  # parameter name fragment -> part; the first that matches wins
    ("lm_head", "lm_head (vocabulary head)"),
    ("embed_tokens", "token embedding"),
    ("visual", "vision tower + projector"),
    ("action_decoder", "classification head"),
    ("score", "classification head"),
    ("action_embedding", "<ACTION> row"),
)


def wrap_timed(owner: Any, attribute: str, name: str) -> None:
    r"""Replace ``owner.attribute`` (a function or method) by one that adds its wall time to ``TIMERS[name]``."""
    function = getattr(owner, attribute)
    if getattr(function, "_timed", False):
        return

    @functools.wraps(function)
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = clock()
        try:
            return function(*args, **kwargs)
        finally:
            TIMERS[name] += clock() - start

    timed._timed = True  # type: ignore[attr-defined]
    setattr(owner, attribute, timed)


def part_of(name: str) -> str:
    return next((part for fragment, part in PARTS if fragment in name), "LLM layers + norms")


def memory_holdings(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, dict[str, float]]:
    r"""MiB of parameters, gradients and optimizer state by part of the model (shared tensors counted once)."""
    holdings: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    seen: set[int] = set()
    names = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), name)
        if id(param) in seen:
            continue

        seen.add(id(param))
        part = holdings[part_of(name)]
        part["parameters"] += param.numel() * param.element_size() / 2**20
        part["trainable"] += param.numel() * param.element_size() / 2**20 if param.requires_grad else 0.0
        if param.grad is not None:
            part["gradients"] += param.grad.numel() * param.grad.element_size() / 2**20

    if optimizer is not None:
        for param, state in optimizer.state.items():
            part = holdings[part_of(names.get(id(param), ""))]
            part["optimizer state"] += (
                sum(value.numel() * value.element_size() for value in state.values() if torch.is_tensor(value)) / 2**20
            )

    return {part: dict(values) for part, values in holdings.items()}


class StepProfile(TrainerCallback):
    r"""Per-step time split (see the module docstring) and the memory the trainer holds; ``save`` writes JSON."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.steps: list[dict[str, float]] = []
        self.phase = "idle"
        self.layer_seconds: dict[str, float] = defaultdict(float)
        self.layer_starts: dict[int, float] = {}
        self.forward_seconds = 0.0
        self.forward_start = 0.0
        self.mark = 0.0
        self.step: dict[str, float] = {}
        self.timers_at_step = dict(TIMERS)
        self.info: dict[str, Any] = {"modules_imported": len(sys.modules)}
        self.model: torch.nn.Module | None = None

    def _hook(self, model: torch.nn.Module) -> None:
        from transformers.modeling_layers import GradientCheckpointingLayer

        def forward_pre(module: torch.nn.Module, args: Any) -> None:
            self.phase, self.forward_start = "forward", clock()

        def forward_post(module: torch.nn.Module, args: Any, output: Any) -> None:
            self.forward_seconds += clock() - self.forward_start
            self.phase = "backward"

        def layer_pre(module: torch.nn.Module, args: Any) -> None:
            self.layer_starts[id(module)] = clock()

        def layer_post(module: torch.nn.Module, args: Any, output: Any) -> None:
            self.layer_seconds[self.phase] += clock() - self.layer_starts.pop(id(module), clock())

        model.register_forward_pre_hook(forward_pre)
        model.register_forward_hook(forward_post)
        for module in model.modules():
            if isinstance(module, GradientCheckpointingLayer):
                module.register_forward_pre_hook(layer_pre)
                module.register_forward_hook(layer_post)

    def on_train_begin(self, args, state, control, model=None, **kwargs) -> None:
        self.model = model
        self._hook(model)
        self.info["rss_at_train_begin_mib"] = psutil.Process().memory_info().rss / 2**20
        self.info["torch_threads"] = torch.get_num_threads()
        self.mark = clock()

    def on_step_begin(self, args, state, control, **kwargs) -> None:
        now = clock()
        self.step = {"data": now - self.mark}
        self.mark, self.forward_seconds = now, 0.0
        self.layer_seconds.clear()

    def on_pre_optimizer_step(self, args, state, control, **kwargs) -> None:
        now = clock()
        recompute = self.layer_seconds.get("backward", 0.0)
        self.step.update(
            forward=self.forward_seconds,
            recompute=recompute,
            backward=now - self.mark - self.forward_seconds - recompute,
        )
        self.mark, self.phase = now, "optimizer"

    def on_optimizer_step(self, args, state, control, **kwargs) -> None:
        now = clock()
        self.step["optimizer"] = now - self.mark
        self.mark = now

    def on_step_end(self, args, state, control, optimizer=None, **kwargs) -> None:
        now = clock()
        self.step["other"] = now - self.mark
        for name, seconds in TIMERS.items():
            self.step[f"data: {name}"] = seconds - self.timers_at_step.get(name, 0.0)
        self.timers_at_step = dict(TIMERS)
        self.steps.append(self.step)
        if len(self.steps) == 1 and self.model is not None:  # optimizer state exists after the first step
            self.info["holdings_mib"] = memory_holdings(self.model, optimizer)
        self.mark, self.phase = now, "idle"

    def on_train_end(self, args, state, control, **kwargs) -> None:
        self.save()

    def save(self) -> None:
        timed = self.steps[1:] or self.steps  # the first step warms up
        keys = sorted({key for step in timed for key in step})
        mean = {key: sum(step.get(key, 0.0) for step in timed) / len(timed) for key in keys}
        with open(self.path, "w", encoding="utf-8") as f:
            json.dump({"mean_step_seconds": mean, "steps": len(self.steps), **self.info}, f, indent=1)


def tree_cpu_seconds() -> float:
    r"""User + system CPU seconds of this process and its live descendants (e.g. dataloader workers)."""
    processes = [psutil.Process(), *psutil.Process().children(recursive=True)]
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def peak_rss() -> int:
    r"""This process's peak RSS so far (``VmHWM``), in bytes."""
    with open("/proc/self/status", encoding="utf-8") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


class CpuClock(TrainerCallback):
    r"""Wall and CPU seconds of the training loop (process tree): on a shared machine, CPU time is the fairer cost.

    Also the trainer's peak RSS when training ends (``VmHWM``), before the final save: saving reads every weight,
    which maps in the memory-mapped ones training never touched (file pages, raising the whole run's peak RSS).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.start = (0.0, 0.0)

    def on_train_begin(self, args, state, control, **kwargs) -> None:
        self.start = (time.perf_counter(), tree_cpu_seconds())

    def on_train_end(self, args, state, control, **kwargs) -> None:
        wall, cpu = time.perf_counter() - self.start[0], tree_cpu_seconds() - self.start[1]
        with open(self.path, "w", encoding="utf-8") as f:
            json.dump({"wall_seconds": wall, "cpu_seconds": cpu, "steps": state.global_step, "hwm": peak_rss()}, f)
