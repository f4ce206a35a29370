"""The backbone + ActionDecoder wrapper: one module for the Trainer, DDP, FSDP and DeepSpeed.

Like TRL's value-head model, the head lives outside the (PEFT-wrapped) backbone, so LoRA and freeze tuning never
target it. The forward runs the backbone's own forward with lm_head bypassed (``backbone.final_hidden_states``: no
vocabulary-size logits, no hidden states of every layer) and classifies the last hidden state at the last
``<ACTION>`` token, the only row the last layer's MLP computes (``pooled_mlp``); a mixture-of-experts backbone adds
its router loss, as in sft.
"""

from dataclasses import dataclass
from typing import Any

import torch
from peft import PeftModel
from torch import nn
from transformers.utils import ModelOutput

from .action_decoder import ACTION_EMBEDDING_KEY, ACTION_TOKEN, ActionDecoder, copy_full_tensor
from .backbone import final_hidden_states
from .embedding_rows import EmbeddingRows
from .head_config import to_config
from .layers import decoder_layers
from .loss import ActionLoss
from .multi_label import SINGLE_LABEL
from .placement import execution_device, final_hidden_device
from .pooled_mlp import PooledRowsMLP


BACKBONE_PREFIX = "backbone."
DECODER_PREFIX = "action_decoder."


@dataclass
class ActionClassifierOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None  # the MoE router loss, already in ``loss`` (times its coefficient)


def last_token_positions(input_ids: torch.Tensor, token_id: int) -> torch.Tensor:
    r"""Index of the last ``token_id`` in each row (works for left and right padding)."""
    positions = torch.arange(input_ids.size(-1), device=input_ids.device).expand_as(input_ids)
    last = torch.where(input_ids == token_id, positions, -1).max(dim=-1).values
    if (last < 0).any():
        raise ValueError(f"A sequence in the batch has no {ACTION_TOKEN} token.")

    return last


class ActionClassificationModel(nn.Module):
    def __init__(
        self,
        backbone: nn.Module,
        action_decoder: ActionDecoder,
        action_token_id: int,
        action_embedding: torch.Tensor,
        label_names: list[str] | None = None,
        router_aux_loss_coef: float | None = None,
        problem_type: str = SINGLE_LABEL,
        threshold: float = 0.5,
        options: dict[str, Any] | None = None,
        loss_fn: ActionLoss | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.action_decoder = action_decoder
        self.action_token_id = action_token_id
        self.label_names = label_names
        self.router_aux_loss_coef = router_aux_loss_coef  # None: no router loss (dense model, or not asked for)
        self.problem_type = problem_type
        self.threshold = threshold  # multi-label decoding, saved with the head
        self.options = dict(options or {})  # the run's saved options by argument name (``head_config.HEAD_OPTIONS``)
        self.loss_fn = loss_fn or ActionLoss(problem_type=problem_type)  # the objective (saved with the head)
        layers = decoder_layers(self.base_model)  # `action_hidden_layer` deleted the layers above the classified one
        self.hidden_layer = len(layers) - 1 if layers is not None else None
        # its own parameter, so it can have its own learning rate and is saved with the head
        self.action_embedding = nn.Parameter(action_embedding.detach().clone().float())
        self.config = self.base_model.config  # HF Trainer and accelerate read `model.config`
        self.backbone.get_input_embeddings().register_forward_hook(self._write_action_embedding)
        self.embedding_rows: EmbeddingRows | None = None  # `train_embedding_rows`: the trained rows of the table
        # the router loss counts every position of every layer: with it, the last MLP computes them all
        self.pooled_mlp = PooledRowsMLP(layers[-1] if layers and router_aux_loss_coef is None else None)

    def train_embedding_rows(self, token_ids: torch.Tensor) -> EmbeddingRows:
        r"""Freeze the input embedding table and train a copy of the rows of ``token_ids`` (``<ACTION>`` left out).

        The ``<ACTION>`` row is ``action_embedding``; the trained rows go back into the table on every save, so
        what is saved is an ordinary model.
        """
        ids = torch.unique(token_ids.long())
        self.embedding_rows = EmbeddingRows(self.backbone.get_input_embeddings(), ids[ids != self.action_token_id])
        return self.embedding_rows

    def _check_embedding_rows(self, input_ids: torch.Tensor) -> None:
        r"""A training batch with a token outside the trained rows would train a row the dense table trains."""
        unused = self.embedding_rows.unused_ids(input_ids)
        unused = unused[unused != self.action_token_id]
        if unused.numel():
            raise ValueError(
                f"A training batch has token ids {unused.tolist()[:10]} that are not in the training set's tokens, "
                "so their embedding rows would not train: set `action_embedding_rows: all`."
            )

    @property
    def base_model(self) -> nn.Module:
        r"""The transformers model, without the PEFT wrapper."""
        return self.backbone.get_base_model() if isinstance(self.backbone, PeftModel) else self.backbone

    def _write_action_embedding(self, module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        is_action = (args[0] == self.action_token_id).unsqueeze(-1).to(output.device)
        # the row keeps its own (fp32) dtype and device; the embedding's output may sit on another device
        return torch.where(is_action, self.action_embedding.to(output.device, output.dtype), output)

    def place_head(self) -> None:
        r"""The head beside the backbone's last layer, the ``<ACTION>`` row beside the input embedding.

        For a backbone dispatched over several devices (``device_map``), which is never moved as a whole.
        """
        self.action_decoder.to(final_hidden_device(self.base_model))
        self.action_embedding.data = self.action_embedding.data.to(self.input_device)

    @property
    def input_device(self) -> torch.device:
        r"""Where a batch goes: the input embedding's device."""
        return execution_device(self.backbone.get_input_embeddings())

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True, assign: bool = False) -> Any:
        r"""A LoRA run's checkpoints leave out the frozen base (it comes from the base model): strict about the rest.

        DeepSpeed restores the module from its own checkpoint with ``strict=True``; HF only relaxes that for a
        ``PeftModel``.
        """
        if not (strict and isinstance(self.backbone, PeftModel)):
            return super().load_state_dict(state_dict, strict=strict, assign=assign)

        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        frozen = {name for name, param in self.named_parameters() if not param.requires_grad}
        missing = [key for key in result.missing_keys if key not in frozen]
        if missing or result.unexpected_keys:
            raise RuntimeError(
                f"Error(s) in loading state_dict for {type(self).__name__}: missing keys {missing}, unexpected keys "
                f"{result.unexpected_keys}."
            )

        return result

    def create_or_update_model_card(self, output_dir: str) -> None:
        r"""Called by HF Trainer's model card code for PEFT runs."""
        if isinstance(self.backbone, PeftModel):
            self.backbone.create_or_update_model_card(output_dir)

    @property
    def _no_split_modules(self) -> list[str]:
        r"""FSDP's transformer-based wrap policy (accelerate) wraps these: the backbone's blocks and the head."""
        return [*(getattr(self.base_model, "_no_split_modules", None) or []), type(self.action_decoder).__name__]

    @property
    def is_gradient_checkpointing(self) -> bool:
        r"""HF Trainer reads it to choose DDP's ``find_unused_parameters``."""
        return getattr(self.base_model, "is_gradient_checkpointing", False)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict[str, Any] | None = None) -> None:
        self.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        action_labels: torch.Tensor | None = None,
        **model_inputs: Any,
    ) -> ActionClassifierOutput:
        if self.embedding_rows is not None and self.training and torch.is_grad_enabled():
            self._check_embedding_rows(input_ids)

        positions = last_token_positions(input_ids, self.action_token_id)
        with self.pooled_mlp.running(positions):
            hidden_states, aux_loss = final_hidden_states(
                self.base_model,
                input_ids,
                attention_mask=attention_mask,
                output_router_logits=self.router_aux_loss_coef is not None,
                **model_inputs,
            )
        positions = positions.to(hidden_states.device)
        pooled = hidden_states[torch.arange(hidden_states.size(0), device=hidden_states.device), positions]
        logits = self.action_decoder(pooled)
        loss = None
        if action_labels is not None:
            loss = self.loss_fn(logits, action_labels)
            if aux_loss is not None:
                loss = loss + self.router_aux_loss_coef * aux_loss.to(loss.device)

        return ActionClassifierOutput(loss=loss, logits=logits, aux_loss=aux_loss)

    def head_config(self) -> dict[str, Any]:
        r"""What ``action_decoder_config.json`` holds: the saved options (with this model's resolved values), names, loss."""
        resolved = {
            "hidden_size": self.action_decoder.hidden_size,
            "action_decoder_hidden_size": self.action_decoder.decoder_hidden_size,
            "action_hidden_layer": self.hidden_layer,
            "action_problem_type": self.problem_type,
            "action_threshold": self.threshold,
        }
        return {
            "action_token": ACTION_TOKEN,
            "action_token_id": self.action_token_id,
            "label_names": self.label_names,
            **to_config({**self.options, **resolved}),
            **self.loss_fn.config.to_dict(),
        }

    def save_pretrained(
        self,
        save_directory: str,
        state_dict: dict[str, torch.Tensor] | None = None,
        safe_serialization: bool = True,
        **kwargs: Any,
    ) -> None:
        r"""Save the backbone (adapter or full model) as usual, and the head next to it.

        ``state_dict`` is what HF Trainer hands ``_save``: the gathered full state under ZeRO-3 and FSDP
        FULL_STATE_DICT, so it is split by prefix instead of reading the (possibly sharded) modules.
        """
        if self.embedding_rows is not None:  # the table's tensor is the one in `state_dict` (one process, DDP)
            self.embedding_rows.write_into_table()
        if state_dict is None:
            state_dict = self.state_dict()

        backbone_state = {k[len(BACKBONE_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(BACKBONE_PREFIX)}
        head_state = {k[len(DECODER_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(DECODER_PREFIX)}
        if isinstance(self.backbone, PeftModel):
            # The <ACTION> row is saved with the head, so a resized embedding is never saved with the adapter (PEFT's
            # "auto" check also reads `config.vocab_size`, which multimodal configs lack: AttributeError).
            kwargs.setdefault("save_embedding_layers", False)

        self.backbone.save_pretrained(
            save_directory, state_dict=backbone_state, safe_serialization=safe_serialization, **kwargs
        )
        self.action_decoder.save_pretrained(
            save_directory,
            action_embedding=state_dict[ACTION_EMBEDDING_KEY],
            extra_config=self.head_config(),
            state_dict=head_state,
        )

    def load_head(self, load_directory: str) -> None:
        r"""Load decoder weights and the ``<ACTION>`` embedding saved by :meth:`save_pretrained`."""
        action_embedding = self.action_decoder.load_pretrained(load_directory)
        if action_embedding is None:  # an export: the learned row was merged into the embedding table
            action_embedding = self.backbone.get_input_embeddings().weight[self.action_token_id].detach().float()
        elif action_embedding.shape != self.action_embedding.shape:
            raise ValueError(
                f"The {ACTION_TOKEN} embedding in {load_directory} has shape {tuple(action_embedding.shape)}, "
                f"the model needs {tuple(self.action_embedding.shape)}: the head was trained for another model."
            )

        copy_full_tensor(self.action_embedding, action_embedding)
