"""The last layer's MLP runs on the pooled rows only: the same logits and gradients, and no state left behind."""

import pytest
import torch
from torch import nn

from ivcp.data import ActionDataCollator
from ivcp.model import load_action_model
from ivcp.model.pooled_mlp import PooledRowsMLP
from tests.helpers import action_example, base_config, load_action_data, motion_data_with, read_json, rows_seen


CHECKPOINTING = {
    "off": {"disable_gradient_checkpointing": True},
    "reentrant": {"use_reentrant_gc": True},  # LLaMA-Factory's default
    "non_reentrant": {"use_reentrant_gc": False},
}


def _model_and_batches(tiny_model, motion_data, tmp_path, **overrides):
    r"""A fully trainable model and two batches of one padded length whose ``<ACTION>`` tokens sit elsewhere."""
    clips = [example["videos"][0] for example in read_json(f"{motion_data}/motion_train.json")]
    prompts = ["<video>What is the person doing?<ACTION>", "<video>What is the person in this clip doing now?<ACTION>"]
    examples = [action_example(prompts[i in (0, 5)], label=i % 4, video=clips[i]) for i in range(6)]
    data_dir = motion_data_with(motion_data, tmp_path / "data", "case", examples)
    config = base_config(tiny_model, str(data_dir), str(tmp_path / "out"), dataset="case", finetuning_type="full")
    config.update(overrides, lora_target=None)
    (model_args, training_args, finetuning_args), tokenizer_module, template, _, dataset = load_action_data(config)
    model = load_action_model(tokenizer_module["tokenizer"], model_args, finetuning_args, training_args.do_train)
    model.train()
    collator = ActionDataCollator(template=template, model=model.backbone, **tokenizer_module)
    rows = dataset["train_dataset"]
    batches = [collator([rows[i] for i in indices]) for indices in ((0, 1, 2), (3, 4, 5))]
    assert batches[0]["input_ids"].shape == batches[1]["input_ids"].shape  # the long prompt first, then last
    return model, batches


def _last_mlp(model):
    return model.base_model.model.language_model.layers[-1].mlp


def _kept(model) -> int:
    r"""How many forwards' positions are kept for a recomputation (their graph, with the layer's input, alive)."""
    return sum(not memory.expired() for _, memory in model.pooled_mlp._pending.values())


def _logits_and_gradients(model, batches):
    model.zero_grad(set_to_none=True)
    outputs = [model(**batch) for batch in batches]
    for output in outputs:  # the first forward's backward recomputes its last layer while later ones wait too
        output.loss.backward()
    gradients = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return torch.cat([output.logits.detach() for output in outputs]), gradients


def _assert_same(logits, gradients, full_logits, full_gradients) -> None:
    r"""The pooled run's logits and every parameter's gradient are the whole MLP's, to float rounding."""
    torch.testing.assert_close(logits, full_logits, rtol=1e-5, atol=1e-6)
    assert gradients.keys() == full_gradients.keys() and len(gradients) > 10
    for name, gradient in gradients.items():
        torch.testing.assert_close(gradient, full_gradients[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("checkpointing", list(CHECKPOINTING))
def test_the_last_mlp_computes_one_row_per_sequence_with_the_same_logits_and_gradients(
    tiny_model, motion_data, tmp_path, checkpointing
):
    model, batches = _model_and_batches(tiny_model, motion_data, tmp_path, **CHECKPOINTING[checkpointing])
    seen = rows_seen(_last_mlp(model).gate_proj)
    reference_seen = rows_seen(model.base_model.model.language_model.layers[-2].mlp.gate_proj)
    pooled, pooled_gradients = [], []
    for batch in batches:  # forward, backward, forward, backward: as a trainer does
        logits, gradients = _logits_and_gradients(model, [batch])
        pooled.append(logits)
        pooled_gradients.append(gradients)
    length = batches[0]["input_ids"].shape[1]
    runs = 2 if checkpointing == "off" else 4  # checkpointing runs each layer again in the backward
    assert reference_seen == [length] * runs and seen == [1] * runs

    model.pooled_mlp.enabled = False
    for batch, logits, gradients in zip(batches, pooled, pooled_gradients):
        _assert_same(logits, gradients, *_logits_and_gradients(model, [batch]))
    assert seen[runs:] == [length] * runs


def test_nothing_is_kept_without_a_gradient_nor_once_the_graph_is_freed(tiny_model, motion_data, tmp_path):
    model, (batch, _) = _model_and_batches(tiny_model, motion_data, tmp_path)
    seen = rows_seen(_last_mlp(model).gate_proj)
    inputs = {key: value for key, value in batch.items() if key != "action_labels"}
    with torch.no_grad():
        model(**batch)
    assert _kept(model) == 0
    output = model(**batch)
    assert _kept(model) == 1  # the backward recomputes the layer with them
    output.loss.backward()
    assert _kept(model) == 0  # the backward freed the graph, and the layer's input with it

    model.base_model(**inputs)  # the backbone called on its own: every row, as it is
    assert seen == [1, 1, 1, batch["input_ids"].shape[1]]


@pytest.mark.parametrize("checkpointing", list(CHECKPOINTING))
def test_a_second_backward_over_a_kept_graph_recomputes_the_same_rows(
    tiny_model, motion_data, tmp_path, checkpointing
):
    model, (batch, _) = _model_and_batches(tiny_model, motion_data, tmp_path, **CHECKPOINTING[checkpointing])
    _, once = _logits_and_gradients(model, [batch])
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward(retain_graph=True)
    loss.backward()
    for name, gradient in once.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, 2 * gradient, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("checkpointing", list(CHECKPOINTING))
def test_two_forwards_then_their_backwards_in_turn_give_the_gradients_of_the_whole_mlp(
    tiny_model, motion_data, tmp_path, checkpointing
):
    model, batches = _model_and_batches(tiny_model, motion_data, tmp_path, **CHECKPOINTING[checkpointing])
    seen = rows_seen(_last_mlp(model).gate_proj)
    logits, gradients = _logits_and_gradients(model, batches)
    assert set(seen) == {1}

    model.pooled_mlp.enabled = False
    _assert_same(logits, gradients, *_logits_and_gradients(model, batches))


class ResidualLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Linear(4, 4)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states + self.mlp(hidden_states)


def test_a_dropped_forwards_positions_never_reach_a_later_tensor_at_its_address():
    layer = ResidualLayer()
    pooled_mlp = PooledRowsMLP(layer)
    hidden_states = torch.randn(2, 5, 4, requires_grad=True)
    with pooled_mlp.running(torch.tensor([1, 3])):
        layer(hidden_states)  # records a graph, dropped without a backward: its positions wait for it
    ((positions, memory),) = pooled_mlp._pending.values()
    del hidden_states
    assert memory.expired()

    later = torch.randn(2, 5, 4)  # the allocator may hand the freed address out again: as if it did
    key = (later.data_ptr(), tuple(later.shape))
    pooled_mlp._pending[key] = (positions, memory)
    torch.testing.assert_close(layer(later), later + layer.mlp(later))  # every row, as it is


def test_data_parallel_replicas_run_every_row():
    layer = ResidualLayer()
    pooled_mlp = PooledRowsMLP(layer)
    hidden_states = torch.randn(2, 5, 4)
    layer._is_replica = True  # what nn.DataParallel sets on its copies, which share the hooks and run in threads
    with pooled_mlp.running(torch.tensor([1, 3])):
        torch.testing.assert_close(layer(hidden_states), hidden_states + layer.mlp(hidden_states))
