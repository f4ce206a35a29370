"""The wrapper model in-process: pooling at <ACTION>, no lm_head, head loading, and the <ACTION> lr group."""

import copy

import pytest
import torch
from llamafactory.hparams import DataArguments

from ivcp.data import ActionDataCollator
from ivcp.model import load_action_model
from ivcp.model.action_decoder import ActionDecoder
from ivcp.train.action_cls.embedding_rows import train_used_embedding_rows
from ivcp.train.action_cls.trainer import ActionClsTrainer
from tests.helpers import base_config, load_action_data


def _setup(tiny_model, motion_data, tmp_path, **overrides):
    config = base_config(tiny_model, motion_data, str(tmp_path / "out"), **overrides)
    (model_args, training_args, finetuning_args), tokenizer_module, template, _, dataset = load_action_data(config)
    model = load_action_model(tokenizer_module["tokenizer"], model_args, finetuning_args, training_args.do_train)
    collator = ActionDataCollator(template=template, model=model.backbone, **tokenizer_module)
    batch = collator([dataset["train_dataset"][i] for i in range(2)])
    return model, batch, (model_args, training_args, finetuning_args, tokenizer_module, dataset, collator)


def test_logits_come_from_the_action_hidden_state_without_vocabulary_logits(tiny_model, motion_data, tmp_path):
    model, batch, _ = _setup(tiny_model, motion_data, tmp_path)
    lm_head = model.base_model.get_output_embeddings()
    assert not lm_head.weight.requires_grad  # untied and unused: frozen
    vocab_logits = []
    lm_head.register_forward_hook(lambda module, args, output: vocab_logits.append(output.shape[1]))

    output = model(**batch)
    assert output.logits.shape == (2, 4) and output.loss.ndim == 0
    assert vocab_logits == [0]  # lm_head is bypassed: its input is kept, it computes logits for no position
    output.loss.backward()
    assert model.action_embedding.grad is not None and model.action_embedding.grad.abs().sum() > 0
    assert model.action_decoder.net.weight.grad.abs().sum() > 0

    with torch.no_grad():  # same numbers by hand: the last hidden state at the last <ACTION>, through the head
        inner = model.base_model.model
        inputs = {k: v for k, v in batch.items() if k != "action_labels"}
        hidden = inner(**inputs, use_cache=False).last_hidden_state
        action_id = model.action_token_id
        positions = [max(i for i, t in enumerate(row.tolist()) if t == action_id) for row in batch["input_ids"]]
        expected = model.action_decoder(hidden[torch.arange(2), positions])
        torch.testing.assert_close(model(**batch).logits, expected)


def test_action_embedding_replaces_the_table_row(tiny_model, motion_data, tmp_path):
    model, batch, _ = _setup(tiny_model, motion_data, tmp_path)
    with torch.no_grad():
        model.action_embedding.fill_(3.0)
        embeds = model.backbone.get_input_embeddings()(batch["input_ids"])

    is_action = batch["input_ids"] == model.action_token_id
    assert torch.all(embeds[is_action] == 3.0)
    assert not torch.any(embeds[~is_action] == 3.0)


def _trainer(model, training_args, finetuning_args, tokenizer_module, dataset, collator) -> ActionClsTrainer:
    r"""The stage's trainer for ``model``: its optimizer's parameter groups are under test."""
    return ActionClsTrainer(
        model=model,
        args=training_args,
        finetuning_args=finetuning_args,
        data_collator=collator,
        train_dataset=dataset["train_dataset"],
        **tokenizer_module,
    )


def test_action_token_gets_its_own_learning_rate(tiny_model, motion_data, tmp_path):
    model, _, (_, training_args, finetuning_args, tokenizer_module, dataset, collator) = _setup(
        tiny_model, motion_data, tmp_path, learning_rate=1e-3, action_token_lr_scale=0.25
    )
    trainer = _trainer(model, training_args, finetuning_args, tokenizer_module, dataset, collator)
    optimizer = trainer.create_optimizer()
    groups = [group for group in optimizer.param_groups if any(p is model.action_embedding for p in group["params"])]
    assert len(groups) == 1 and groups[0]["params"] == [model.action_embedding]
    assert groups[0]["lr"] == pytest.approx(2.5e-4) and groups[0]["weight_decay"] == 0.0
    others = [group for group in optimizer.param_groups if group is not groups[0]]
    assert all(group["lr"] == pytest.approx(1e-3) for group in others)
    assert any(p is model.action_decoder.net.weight for group in others for p in group["params"])

    # one real step: the row moves by lr * scale (Adam's first step is lr * sign(grad), clipping aside)
    before = model.action_embedding.detach().clone()
    trainer.create_scheduler(num_training_steps=10, optimizer=optimizer)
    batch = collator([dataset["train_dataset"][i] for i in range(2)])
    model(**batch).loss.backward()
    optimizer.step()
    step = (model.action_embedding.detach() - before).abs()
    moved = step[step > 0]
    assert moved.numel() > 0 and torch.allclose(moved, torch.full_like(moved, moved.max()), rtol=0.05)
    assert moved.max() <= 2.5e-4 * 1.01


def test_action_token_lr_scale_zero_freezes_the_embedding(tiny_model, motion_data, tmp_path):
    # lr 0 alone would keep the row in the optimizer, and its gradient (the largest of the model at the start)
    # would still set the clipping factor of every other parameter: frozen means no gradient at all
    model, batch, (_, training_args, finetuning_args, tokenizer_module, dataset, collator) = _setup(
        tiny_model, motion_data, tmp_path, action_token_lr_scale=0.0
    )
    assert not model.action_embedding.requires_grad
    trainer = _trainer(model, training_args, finetuning_args, tokenizer_module, dataset, collator)
    optimizer = trainer.create_optimizer()
    assert not any(p is model.action_embedding for group in optimizer.param_groups for p in group["params"])
    model(**batch).loss.backward()
    assert model.action_embedding.grad is None
    assert model.action_decoder.net.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("own_clip", [True, False])
def test_action_token_gradient_is_clipped_on_its_own(tiny_model, motion_data, tmp_path, own_clip):
    # the row's gradient is the largest of the model (docs/learning.md): in the global norm it would set the
    # clipping factor of every other parameter; on its own it is clipped to max_grad_norm like the rest together
    max_norm = 1e-3  # below both norms: both sides are clipped
    model, batch, (_, training_args, finetuning_args, tokenizer_module, dataset, collator) = _setup(
        tiny_model, motion_data, tmp_path, max_grad_norm=max_norm, action_token_own_clip=own_clip
    )
    trainer = _trainer(model, training_args, finetuning_args, tokenizer_module, dataset, collator)
    model(**batch).loss.backward()
    row = model.action_embedding
    others = [p for p in model.parameters() if p.grad is not None and p is not row]
    norms = lambda: (row.grad.norm(), torch.nn.utils.get_total_norm([p.grad for p in others]))
    row_before, others_before = norms()
    assert row_before > max_norm and others_before > max_norm

    logged = trainer._clip_grad_norm(model)
    torch.testing.assert_close(logged.float(), torch.hypot(row_before, others_before))  # all gradients, unclipped
    row_after, others_after = norms()
    if own_clip:
        torch.testing.assert_close(row_after, torch.tensor(max_norm), rtol=1e-3, atol=0)
        torch.testing.assert_close(others_after, torch.tensor(max_norm), rtol=1e-3, atol=0)
    else:  # one factor for all, set by the norm of everything
        factor = max_norm / torch.hypot(row_before, others_before)
        torch.testing.assert_close(row_after / row_before, factor, rtol=1e-3, atol=0)
        torch.testing.assert_close(others_after / others_before, factor, rtol=1e-3, atol=0)


def test_head_starts_from_action_decoder_path(tiny_model, motion_data, tmp_path):
    saved = ActionDecoder(hidden_size=64, num_classes=4)
    saved.save_pretrained(str(tmp_path / "head"), action_embedding=torch.full((64,), 0.5))
    model, _, _ = _setup(tiny_model, motion_data, tmp_path, action_decoder_path=str(tmp_path / "head"))
    assert torch.equal(model.action_decoder.net.weight, saved.net.weight)
    assert torch.all(model.action_embedding == 0.5)


@pytest.mark.parametrize(
    "saved, message",
    [
        (
            ActionDecoder(hidden_size=64, num_classes=7),
            "num_classes=7, but this run has 4: set `num_action_classes: 7`",
        ),
        (ActionDecoder(hidden_size=32, num_classes=4), "hidden_size=32, but this run has 64"),
    ],
)
def test_mismatched_action_decoder_path_is_rejected(tiny_model, motion_data, tmp_path, saved, message):
    saved.save_pretrained(str(tmp_path / "head"))
    with pytest.raises(ValueError, match=message):
        _setup(tiny_model, motion_data, tmp_path, action_decoder_path=str(tmp_path / "head"))


def test_missing_action_decoder_path_is_rejected(tiny_model, motion_data, tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no action_decoder.safetensors"):
        _setup(tiny_model, motion_data, tmp_path, action_decoder_path=str(tmp_path))


def test_a_copied_action_processor_keeps_its_own_settings(tiny_model):
    from transformers import AutoProcessor

    from ivcp.model.video_processor import action_processor

    original = action_processor(AutoProcessor.from_pretrained(tiny_model))
    original.video_fps = 2.0
    other = copy.copy(original)  # what ActionClassifier.with_video_settings does before setting its own
    other.video_fps, other.video_maxlen = 4.0, 4
    assert (original.video_fps, other.video_fps, other.video_maxlen) == (2.0, 4.0, 4)
    assert type(other) is type(original) and other.video_processor is not None


def test_lora_state_restores_without_frozen_base_not_without_trained_weights(tiny_model, motion_data, tmp_path):
    r"""DeepSpeed reloads a LoRA run's engine checkpoint (frozen base left out) with ``strict=True``."""
    model, _, _ = _setup(tiny_model, motion_data, tmp_path)
    trained = {name for name, param in model.named_parameters() if param.requires_grad}
    state = {key: value.clone() for key, value in model.state_dict().items() if key in trained}
    assert len(state) < len(model.state_dict())  # the frozen base is not in it
    state["action_embedding"] += 1.0
    model.load_state_dict(state)
    assert torch.equal(model.action_embedding, state["action_embedding"])

    lora_key = next(key for key in state if "lora_A" in key)
    with pytest.raises(RuntimeError, match=lora_key):
        model.load_state_dict({key: value for key, value in state.items() if key != lora_key})


def test_used_embedding_rows_replace_the_table_in_the_optimizer(tiny_model, motion_data, tmp_path):
    model, batch, (_, training_args, finetuning_args, tokenizer_module, dataset, collator) = _setup(
        tiny_model, motion_data, tmp_path, finetuning_type="full", lora_target=None
    )
    table = model.backbone.get_input_embeddings().weight
    dense_output = model(**batch).logits.detach()
    train_used_embedding_rows(
        model, dataset["train_dataset"], tokenizer_module["tokenizer"], DataArguments(), finetuning_args, training_args
    )
    tokens = {t for ids in dataset["train_dataset"]["input_ids"] for t in ids}
    padding = model.backbone.get_input_embeddings().padding_idx  # never trained in the table either
    expected = (tokens | set(tokenizer_module["tokenizer"].all_special_ids)) - {model.action_token_id, padding}
    rows = model.embedding_rows.rows
    assert rows.shape == (len(expected), table.size(1)) and set(model.embedding_rows.token_ids.tolist()) == expected
    assert not table.requires_grad and rows.requires_grad
    torch.testing.assert_close(model(**batch).logits.detach(), dense_output, rtol=0, atol=0)  # same forward

    trainer = _trainer(model, training_args, finetuning_args, tokenizer_module, dataset, collator)
    optimizer = trainer.create_optimizer()
    trained = [p for group in optimizer.param_groups for p in group["params"]]
    assert any(p is rows for p in trained) and not any(p is table for p in trained)
    model(**batch).loss.backward()
    optimizer.step()
    state_elements = sum(t.numel() for s in optimizer.state.values() for t in s.values() if t.ndim)
    assert state_elements == 2 * sum(p.numel() for p in trained)  # Adam's m and v of the rows, none of the table
    assert table.grad is None

    model.embedding_rows.write_into_table()  # what every save does first
    torch.testing.assert_close(table[model.embedding_rows.token_ids], rows.detach(), rtol=0, atol=0)

    batch["input_ids"][0, 0] = max(tokens | expected) + 1  # a token the training set does not have
    with pytest.raises(ValueError, match="action_embedding_rows: all"):
        model(**batch)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({}, None),
        ({"action_embedding_rows": "all"}, "action_embedding_rows: all"),
        ({"weight_decay": 0.1}, "weight_decay 0.1 moves every row"),
        ({"optim": "sgd"}, "optim sgd"),
        ({"optim": "adamw_bnb_8bit"}, "optim adamw_bnb_8bit"),
        ({"streaming": True}, "streaming"),
    ],
)
def test_used_embedding_rows_only_where_the_model_is_the_same(tmp_path, overrides, reason):
    from llamafactory.hparams import get_train_args

    from ivcp.hparams.checks import dense_embedding_reason

    config = base_config("unused-model", "unused-data", str(tmp_path), finetuning_type="full", **overrides)
    config.pop("lora_target")
    _, data_args, training_args, finetuning_args, _ = get_train_args(config)
    found = dense_embedding_reason(data_args, finetuning_args, training_args)
    assert found == reason if reason is None else reason in found
