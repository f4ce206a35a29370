"""Training objectives of action_cls: label smoothing, class weights, focal loss, head dropout and the LLM layer.

The behavioural tests train the head in-process through the stage's own workflow (``run_action_cls``) on a set built
so that the outcome is set by the objective, not by the luck of a seed: the examples of a group show the same
single-colour clip (identical inputs, which a few steps of a head on the frozen model tell apart). The black clip holds
5 examples of class 0 and the only example of class 3 (a tenth of the other classes' 10): unweighted, the best answer
for it is class 0 (5 against 1); with ``balanced`` weights (10x for class 3) it is class 3 (5 against 10). The white
clip holds class 0's other 5 examples and class 1's 10, the red clip class 2's 10.
"""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from llamafactory.hparams import get_train_args
from llamafactory.train.tuner import export_model
from safetensors.torch import load_file
from transformers import TrainerCallback

from ivcp.data import ActionDataCollator
from ivcp.demo.motion_videos import write_clip
from ivcp.hparams import ActionFinetuningArguments
from ivcp.inference import ActionClassifier
from ivcp.model import load_action_model
from ivcp.model.action_decoder import HEAD_CONFIG_NAME, ActionDecoder
from ivcp.model.layers import decoder_layers, resolve_hidden_layer
from ivcp.model.loss import (
    ActionLoss,
    ActionLossConfig,
    balanced_class_weights,
    focal_loss,
    parse_class_weights,
    resolve_class_weights,
)
from ivcp.train.action_cls.workflow import run_action_cls
from tests.helpers import base_config, load_action_data, motion_data_with, read_json, saved_weights


COLOURS = {"black": (0, 0, 0), "white": (255, 255, 255), "red": (255, 0, 0)}
GROUPS = (("black", 0, 5), ("black", 3, 1), ("white", 0, 5), ("white", 1, 10), ("red", 2, 10))  # clip, class, count
NUM_EXAMPLES = sum(count for _, _, count in GROUPS)
SMOOTHING = 0.5


def smoothed_target_entropy(smoothing: float, num_classes: int) -> float:
    r"""Entropy of the smoothed one-hot target: the least cross-entropy any prediction can reach against it."""
    true_class = 1 - smoothing + smoothing / num_classes
    other = smoothing / num_classes
    return -(true_class * math.log(true_class) + (num_classes - 1) * other * math.log(other))


@pytest.fixture(scope="module")
def grouped_data(motion_data, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("grouped")
    for name, colour in COLOURS.items():
        write_clip(str(data_dir / f"{name}.mp4"), np.full((8, 64, 64, 3), colour, dtype=np.uint8))
    template = read_json(f"{motion_data}/motion_train.json")[0]
    examples = [
        {**template, "videos": [f"{clip}.mp4"], "action_label": label}
        for clip, label, count in GROUPS
        for _ in range(count)
    ]
    return str(motion_data_with(motion_data, data_dir, "grouped", examples))


class KeepModel(TrainerCallback):
    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.model = model


@pytest.fixture(scope="module")
def train_grouped(tiny_model, grouped_data, tmp_path_factory):
    r"""``train_grouped(name, **options)``: one in-process run (cached by name), evaluated on its training set."""
    runs = {}

    def train(name: str, **options):
        if name not in runs:
            output_dir = tmp_path_factory.mktemp(name)
            config = base_config(
                tiny_model,
                grouped_data,
                str(output_dir),
                dataset="grouped",
                eval_dataset="grouped",
                do_eval=True,
                finetuning_type="freeze",  # the head alone on fixed features: a convex fit, fast and stable
                freeze_trainable_layers=0,
                action_token_lr_scale=0.0,
                per_device_train_batch_size=32,  # the whole set in each step: no batch draw decides the outcome
                learning_rate=5e-2,
                lr_scheduler_type="constant",
                disable_gradient_checkpointing=True,
                save_steps=1000,
                plot_loss=False,
                **{"max_steps": 20, **options},
            )
            keep = KeepModel()
            run_action_cls(*get_train_args(config)[:4], callbacks=[keep])
            state = read_json(output_dir / "trainer_state.json")
            losses = [record["loss"] for record in state["log_history"] if "loss" in record]
            runs[name] = (output_dir, keep.model, losses, read_json(output_dir / "eval_results.json"))

        return runs[name]

    return train


def test_focal_loss_equals_a_hand_computed_value():
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])  # probabilities [0.25, 0.75] and [0.5, 0.5]
    labels = torch.tensor([1, 0])
    first, second = 0.25**2 * -math.log(0.75), 0.5**2 * -math.log(0.5)
    assert focal_loss(logits, labels, gamma=2.0).item() == pytest.approx((first + second) / 2, rel=1e-6)
    weighted = focal_loss(logits, labels, gamma=2.0, weight=torch.tensor([3.0, 1.0]))
    assert weighted.item() == pytest.approx((1 * first + 3 * second) / (1 + 3), rel=1e-6)
    config = ActionLossConfig(loss="focal", focal_gamma=2.0, class_weights=[3.0, 1.0])
    assert ActionLoss(config)(logits, labels).item() == pytest.approx(weighted.item())
    head_config = {"num_classes": 2, **config.to_dict()}  # what the head config holds, and what loading restores
    assert ActionLossConfig.from_head_config(head_config) == config
    assert ActionLossConfig.from_head_config({"num_classes": 2}) == ActionLossConfig()  # heads saved before: plain CE


def test_focal_loss_without_focusing_is_weighted_smoothed_cross_entropy():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=generator) * 3
    labels = torch.tensor([0, 1, 2, 3, 3, 1])
    weight = torch.tensor([0.5, 1.0, 2.0, 4.0])
    expected = F.cross_entropy(logits, labels, weight=weight, label_smoothing=0.2)
    torch.testing.assert_close(focal_loss(logits, labels, 0.0, weight, label_smoothing=0.2), expected)
    # focusing lowers the loss of confident correct examples most
    assert focal_loss(logits, labels, 2.0, weight, label_smoothing=0.2) < expected


def test_class_weights_forms(tmp_path):
    names = ["walk", "run", "jump"]
    (tmp_path / "list.json").write_text(json.dumps([1, 2, 0.5]))
    (tmp_path / "names.json").write_text(json.dumps({"jump": 0.5, "walk": 1, "run": 2}))
    expected = torch.tensor([1.0, 2.0, 0.5])
    for spec in ([1, 2, 0.5], "1,2,0.5", "[1, 2, 0.5]", str(tmp_path / "list.json"), str(tmp_path / "names.json")):
        assert torch.equal(parse_class_weights(spec, 3, names), expected), spec
    assert torch.equal(parse_class_weights({"run": 2, "walk": 1, "jump": 0.5}, 3, names), expected)


def test_balanced_class_weights_are_inverse_class_frequency():
    labels = [0] * 6 + [1] * 3 + [2] * 1  # n / (classes * count): 10/18, 10/9, 10/3
    weights = balanced_class_weights(labels, 3)
    torch.testing.assert_close(weights, torch.tensor([10 / 18, 10 / 9, 10 / 3]))
    assert torch.equal(resolve_class_weights("balanced", 3, train_labels=labels), weights)
    saved = [1.0, 2.0, 3.0]  # evaluation only: the weights saved with the head
    assert resolve_class_weights("balanced", 3, saved=saved).tolist() == saved
    assert resolve_class_weights(None, 3, saved=saved).tolist() == saved
    assert resolve_class_weights(None, 3) is None


@pytest.mark.parametrize(
    "spec, message",
    [
        ([1, 2], "has 2 weights but num_action_classes=3"),
        ([1, -2, 1], "finite numbers >= 0"),
        ([0, 0, 0], "all zero"),
        ({"walk": 1, "run": 2, "swim": 1}, r"names classes \['swim'\] that are not in the label names"),
        ({"walk": 1, "run": 2}, r"no weight for the classes \['jump'\]"),
        ("inverse", "must be `balanced`, a list"),
        ("missing.json", "does not exist"),
    ],
)
def test_bad_class_weights_are_rejected(spec, message):
    with pytest.raises((ValueError, TypeError, FileNotFoundError), match=message):
        parse_class_weights(spec, 3, ["walk", "run", "jump"])


def test_class_weights_by_name_need_names_and_balanced_needs_every_class():
    with pytest.raises(ValueError, match="no class names: set `action_label_names`"):
        parse_class_weights({"walk": 1}, 3)
    with pytest.raises(ValueError, match=r"cannot weight classes \['jump'\]: the training set has no example"):
        balanced_class_weights([0, 1, 1], 3, ["walk", "run", "jump"])
    with pytest.raises(ValueError, match="counts the classes of the training set, and this run has none"):
        resolve_class_weights("balanced", 3)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"action_loss": "hinge"}, "`action_loss` must be one of"),
        ({"action_focal_gamma": -1.0}, "`action_focal_gamma` must be >= 0"),
        ({"action_decoder_dropout": 1.0}, r"`action_decoder_dropout` must be in \[0, 1\)"),
        ({"action_hidden_layer": "last"}, "`action_hidden_layer` must be an integer"),
        ({"action_class_weights": "1,2,3"}, "has 3 weights but num_action_classes=4"),
        ({"action_class_weights": "often"}, "must be `balanced`, a list"),
        ({"action_class_weights": "weights.json"}, "file weights.json does not exist"),
    ],
)
def test_bad_objective_options_are_rejected(options, message):
    with pytest.raises((ValueError, TypeError, FileNotFoundError), match=message):
        ActionFinetuningArguments(stage="action_cls", num_action_classes=4, **options)


def test_hidden_layer_index_is_checked():
    assert resolve_hidden_layer(-1, 2) == 1 and resolve_hidden_layer(0, 2) == 0 and resolve_hidden_layer(-2, 2) == 0
    for layer in (2, -3):
        with pytest.raises(ValueError, match=f"`action_hidden_layer: {layer}` is out of range: .* has 2 layers"):
            resolve_hidden_layer(layer, 2)


def test_decoder_dropout_is_saved_and_only_trains(tmp_path):
    torch.manual_seed(0)
    decoder = ActionDecoder(hidden_size=16, num_classes=3, dropout=0.5)
    decoder.save_pretrained(str(tmp_path))
    assert json.loads((tmp_path / HEAD_CONFIG_NAME).read_text())["dropout"] == 0.5
    hidden = torch.randn(4, 16)
    assert not torch.equal(decoder(hidden), decoder(hidden))  # training mode: a new mask each call
    decoder.eval()
    assert torch.equal(decoder(hidden), decoder.net(hidden))


def test_label_smoothing_bounds_the_training_loss(train_grouped):
    bound = smoothed_target_entropy(SMOOTHING, 4)
    _, _, _, plain = train_grouped("plain")
    _, _, smoothed_losses, smoothed = train_grouped("smoothed", label_smoothing_factor=SMOOTHING)
    assert plain["eval_loss"] < bound  # without smoothing the training set is fitted below the bound ...
    assert smoothed["eval_loss"] >= bound  # ... which cross-entropy against the smoothed target never passes
    assert min(smoothed_losses) >= bound - 1e-4 and smoothed["eval_loss"] < smoothed_losses[0]  # it still trains


def test_balanced_class_weights_raise_minority_recall(train_grouped):
    _, _, _, plain = train_grouped("plain")
    output_dir, model, _, weighted = train_grouped("balanced", action_class_weights="balanced")
    assert plain["eval_recall_3"] == 0.0 and weighted["eval_recall_3"] == 1.0, (plain, weighted)

    counts = [10, 10, 10, 1]  # the weights in use: n / (classes * count), saved with the head
    expected = [NUM_EXAMPLES / (4 * count) for count in counts]
    assert read_json(output_dir / HEAD_CONFIG_NAME)["class_weights"] == pytest.approx(expected)

    # the loss is the weighted mean of the per-example cross-entropy, and class 3's logit gets 10x the push
    logits = torch.randn(8, 4, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 0])
    loss = model.loss_fn(logits, labels)
    weights = torch.tensor(expected)[labels]
    nll = -logits.log_softmax(-1)[torch.arange(8), labels]
    torch.testing.assert_close(loss, (weights * nll).sum() / weights.sum())
    (grad,) = torch.autograd.grad(loss, logits)
    (plain_grad,) = torch.autograd.grad(F.cross_entropy(logits, labels), logits)
    ratio = (grad[3] / plain_grad[3]) / (grad[0] / plain_grad[0])
    torch.testing.assert_close(ratio, torch.full((4,), 10.0))


def test_hidden_layer_runs_fewer_layers_and_classifies_that_layer(tiny_model, motion_data, tmp_path):
    models = {}
    for layer in (-1, 0):
        config = base_config(tiny_model, motion_data, str(tmp_path / "out"), action_hidden_layer=layer)
        (model_args, _, finetuning_args), tokenizer_module, template, _, dataset = load_action_data(config)
        models[layer] = load_action_model(tokenizer_module["tokenizer"], model_args, finetuning_args, True)
    collator = ActionDataCollator(template=template, model=models[0].backbone, **tokenizer_module)
    batch = collator([dataset["train_dataset"][i] for i in range(2)])

    calls = {-1: 0, 0: 0}
    for layer, model in models.items():
        for module in decoder_layers(model.base_model):
            module.register_forward_hook(lambda *args, layer=layer: calls.__setitem__(layer, calls[layer] + 1))
    assert models[0].hidden_layer == 0 and models[-1].hidden_layer == 1
    assert models[0].base_model.config.text_config.num_hidden_layers == 1  # freeze / LoRA / saving see 1 layer

    inputs = {key: value for key, value in batch.items() if key != "action_labels"}
    with torch.no_grad():
        logits = models[0](**batch).logits
        full = models[-1].base_model.model(**inputs, use_cache=False, output_hidden_states=True)
        assert calls == {-1: 2, 0: 1}  # one forward each: the deleted layer is never run
        hidden = models[0].base_model.model(**inputs, use_cache=False).last_hidden_state

    # layer 0's output through the final norm (the full model's hidden_states[1] is layer 0's output, unnormed)
    positions = (batch["input_ids"] == models[0].action_token_id).int().argmax(-1)
    rows = torch.arange(2)
    expected = models[-1].base_model.model.language_model.norm(full.hidden_states[1])
    torch.testing.assert_close(hidden[rows, positions], expected[rows, positions])
    assert not torch.allclose(hidden[rows, positions], full.last_hidden_state[rows, positions])
    torch.testing.assert_close(logits, models[0].action_decoder(hidden[rows, positions]))

    # export: LoRA merged into the kept layer; the exported model holds that layer only and classifies the same
    models[0].save_pretrained(str(tmp_path / "adapter"))
    export_model(
        {
            "model_name_or_path": tiny_model,
            "adapter_name_or_path": str(tmp_path / "adapter"),
            "template": "qwen2_vl",
            "finetuning_type": "lora",
            "export_dir": str(tmp_path / "exported"),
        }
    )
    assert read_json(tmp_path / "exported" / "config.json")["text_config"]["num_hidden_layers"] == 1
    assert not any(".layers.1." in key for key in load_file(str(tmp_path / "exported" / "model.safetensors")))
    exported = ActionClassifier.from_pretrained(str(tmp_path / "exported"), template="qwen2_vl").model
    assert exported.hidden_layer == 0
    with torch.no_grad():
        torch.testing.assert_close(exported(**batch).logits, logits, atol=1e-5, rtol=1e-4)


def test_hidden_layer_head_trains_and_its_objective_round_trips(train_grouped, grouped_data):
    output_dir, model, _, metrics = train_grouped(
        "layer0",
        action_hidden_layer=0,
        action_decoder_dropout=0.1,
        action_class_weights=[1.0, 1.0, 1.0, 2.0],
        label_smoothing_factor=0.1,
        max_steps=60,  # layer 0 separates the clips less than the last layer: let the head converge
    )
    assert metrics["eval_accuracy"] >= 0.8, metrics  # a working classifier (the best possible: 25/31)
    config = read_json(output_dir / HEAD_CONFIG_NAME)
    assert config["hidden_layer"] == 0 and config["dropout"] == 0.1

    saved = read_json(output_dir / "config.json")["text_config"]  # the saved model holds the kept layer only
    assert saved["num_hidden_layers"] == 1 and not any(".layers.1." in key for key in saved_weights(output_dir))
    classifier = ActionClassifier.from_pretrained(str(output_dir))
    assert len(decoder_layers(classifier.model.base_model)) == 1 and classifier.model.hidden_layer == 0
    restored = classifier.model.loss_fn.config  # the objective comes back with the head
    assert (restored.loss, restored.label_smoothing) == ("cross_entropy", 0.1)
    assert restored.class_weights == pytest.approx(config["class_weights"])
    assert classifier.model.action_decoder.dropout.p == 0.1

    example = read_json(f"{grouped_data}/grouped.json")[-1]
    video, prompt = f"{grouped_data}/{example['videos'][0]}", example["conversations"][0]["value"]
    batch = classifier.collator([classifier._encode(video, prompt)])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            classifier.predict_logits([video], prompt), model(**batch).logits, atol=1e-4, rtol=1e-4
        )


def test_liger_patching_cross_entropy_does_not_replace_the_loss(monkeypatch):
    r"""LLaMA-Factory's ``enable_liger_kernel`` sets ``torch.nn.functional.cross_entropy`` to Liger's kernel, which
    writes the gradient into its input in place; the loss binds torch's own at import, so nothing changes."""
    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    loss_fn = ActionLoss(ActionLossConfig(class_weights=[1.0, 2.0, 0.5, 1.0], label_smoothing=0.1))

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        leaf = logits.clone().requires_grad_(True)
        loss = loss_fn(leaf, labels)
        loss.backward()
        return loss.detach(), leaf.grad

    expected_loss, expected_grad = run()
    calls = []

    def liger_like(input, target, *args, **kwargs):  # in place, weight ignored: as older Liger versions
        calls.append(1)
        with torch.no_grad():
            input.mul_(0.0)
        return torch.nn.functional.nll_loss(input.log_softmax(-1), target)

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", liger_like)
    loss, grad = run()
    assert not calls
    torch.testing.assert_close(loss, expected_loss)
    torch.testing.assert_close(grad, expected_grad)
