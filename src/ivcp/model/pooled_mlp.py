"""The last decoder layer's MLP computes only the rows the head reads.

The head reads one position of the last layer's output, at ``<ACTION>``. The MLP works on each position alone, so
its output at the other positions is never read: in the last layer it runs on one row per sequence, and the other
rows get zeros (their residual passes through to the final norm, which nothing reads there either). Attention,
before it, still sees the whole sequence. The pooled row is what the full computation gives, and the MLP is about
three quarters of a layer's matmuls: this saves most of one layer of the forward, of its recomputation under
gradient checkpointing and of its backward.

Gradient checkpointing (HF's, FSDP's or DeepSpeed's) runs the layer again in the backward, after the model's forward
has returned, so the positions of each forward that records a graph are kept, keyed by the layer's input tensor,
which checkpointing keeps for that recomputation (a second backward with ``retain_graph`` included), until that
tensor is freed. A recomputation whose input is not found (more than ``MAX_PENDING`` graphs alive, or a
checkpointing that copies its inputs) runs the whole MLP: with reentrant checkpointing, or none, that gives the
same gradients unless the MLP draws dropout (LoRA's ``lora_dropout``); non-reentrant checkpointing stops with its
``CheckpointError``. ``nn.DataParallel``'s replicas share these hooks and run in threads: there the MLP computes
every row.
"""

from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef


MAX_PENDING = 16  # graphs alive that may still recompute the last layer (a trainer has one)


class PooledRowsMLP:
    r"""Hooks on the last decoder layer and its MLP: gather the pooled rows of the MLP's input, scatter its output."""

    def __init__(self, layer: nn.Module | None) -> None:
        mlp = getattr(layer, "mlp", None)
        self.enabled = isinstance(mlp, nn.Module)  # no MLP found: every forward runs as it is
        self._running: tuple[torch.Tensor, bool] | None = None  # the model's forward: positions, records a graph
        # layer input (address, shape) -> positions, and a weak reference to the input's memory: a freed input's
        # address may come back for another tensor
        self._pending: OrderedDict[tuple[int, tuple[int, ...]], tuple[torch.Tensor, StorageWeakRef]] = OrderedDict()
        self._call: tuple[torch.Tensor, int] | None = None  # positions and length of the layer call under way
        self._gathered = False
        if self.enabled:
            layer.register_forward_pre_hook(self._enter_layer, with_kwargs=True)
            layer.register_forward_hook(self._leave_layer)
            mlp.register_forward_pre_hook(self._gather)
            mlp.register_forward_hook(self._scatter)

    @contextmanager
    def running(self, positions: torch.Tensor) -> Iterator[None]:
        r"""The model's forward with ``positions`` (batch,): the ``<ACTION>`` index of each row."""
        self._running = (positions, torch.is_grad_enabled())
        try:
            yield
        finally:
            self._running = None

    def _forget_freed(self) -> None:
        for key in [key for key, (_, memory) in self._pending.items() if memory.expired()]:
            del self._pending[key]

    def _enter_layer(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hidden_states = args[0] if args else kwargs.get("hidden_states")
        self._call = None
        if getattr(module, "_is_replica", False) or not isinstance(hidden_states, torch.Tensor):
            return

        key = (hidden_states.data_ptr(), tuple(hidden_states.shape))
        if self._running is None:  # a recomputation in the backward, or the backbone called on its own
            positions, memory = self._pending.get(key, (None, None))
            if memory is not None and memory.expired():  # that forward's graph is gone, another tensor is here
                positions = None
        else:
            positions, records_graph = self._running
            if records_graph:
                self._forget_freed()
                self._pending[key] = (positions, StorageWeakRef(hidden_states.untyped_storage()))
                self._pending.move_to_end(key)
                while len(self._pending) > MAX_PENDING:
                    self._pending.popitem(last=False)
        if positions is not None and hidden_states.dim() == 3 and positions.numel() == hidden_states.size(0):
            self._call = (positions, hidden_states.size(1))

    def _leave_layer(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self._call = None

    def _rows(self, tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        positions = self._call[0].to(tensor.device)
        return torch.arange(positions.numel(), device=tensor.device), positions

    def _gather(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        hidden_states = args[0] if args else None
        self._gathered = (
            self.enabled
            and self._call is not None
            and isinstance(hidden_states, torch.Tensor)
            and tuple(hidden_states.shape[:2]) == (self._call[0].numel(), self._call[1])
        )
        if not self._gathered:
            return None

        return (hidden_states[self._rows(hidden_states)].unsqueeze(1), *args[1:])

    def _scatter(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        if not self._gathered:
            return None

        self._gathered = False
        pooled = output[0] if isinstance(output, tuple) else output  # a mixture of experts may add router logits
        full = pooled.new_zeros(pooled.size(0), self._call[1], pooled.size(-1))
        full = full.index_put(self._rows(pooled), pooled[:, 0])
        return (full, *output[1:]) if isinstance(output, tuple) else full
