"""The naive classification recipe, for the benchmark only: what one writes without IVCP's two shortcuts.

It runs the whole chat-template sequence (the answer text too when training) through the full model with
``output_hidden_states=True``, so the LM head computes vocabulary-size logits at every position, and classifies
``hidden_states[-1]`` (the same post-norm state IVCP uses) at the last ``<ACTION>``. Everything else is IVCP's own
``action_cls`` stage (data loading and checks, collator, LoRA, trainer, predict), swapped in by
:func:`naive_recipe`, so only the recipe differs.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest.mock import patch

import torch
import torch.nn.functional as F

import ivcp.data.processor
import ivcp.model.loader
from ivcp.data.processor import ActionDatasetProcessor
from ivcp.model.action_model import ActionClassificationModel, ActionClassifierOutput, last_token_positions


class NaiveActionModel(ActionClassificationModel):
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        action_labels: torch.Tensor | None = None,
        **model_inputs: Any,
    ) -> ActionClassifierOutput:
        outputs = self.base_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_hidden_states=True,
            use_cache=False,
            return_dict=True,
            **model_inputs,
        )
        hidden_states = outputs.hidden_states[-1]
        positions = last_token_positions(input_ids, self.action_token_id)
        rows = torch.arange(hidden_states.size(0), device=hidden_states.device)
        logits = self.action_decoder(hidden_states[rows, positions])
        loss = None if action_labels is None else F.cross_entropy(logits.float(), action_labels)
        return ActionClassifierOutput(loss=loss, logits=logits)


class FullConversationProcessor(ActionDatasetProcessor):
    r"""Keeps every token the template makes: IVCP's checks, then no cut after ``<ACTION>``."""

    keep_answer = True  # False at prediction: the answer is unknown, the sequence ends with the assistant header

    def tokenize(self, example: dict[str, Any], where: str) -> list[int]:
        super().tokenize(example, where)  # the checks (the template's work is done twice; preprocessing is untimed)
        images, videos, audios = example["_images"] or [], example["_videos"] or [], example["_audios"] or []
        messages = self.template.mm_plugin.process_messages(
            example["_prompt"] + example["_response"], images, videos, audios, self.processor
        )
        prompt_ids, answer_ids = self.template.encode_oneturn(
            self.tokenizer, messages, example["_system"], example["_tools"]
        )
        return prompt_ids + answer_ids if self.keep_answer else prompt_ids


class GenerationPromptProcessor(FullConversationProcessor):
    keep_answer = False


@contextmanager
def naive_recipe(predicting: bool) -> Iterator[None]:
    r"""Make ``stage: action_cls`` run the naive recipe (its model and its uncut data) inside the block."""
    processor_class = GenerationPromptProcessor if predicting else FullConversationProcessor
    with (
        patch.object(ivcp.data.processor, "ActionDatasetProcessor", processor_class),
        patch.object(ivcp.model.loader, "ActionClassificationModel", NaiveActionModel),
    ):
        yield
