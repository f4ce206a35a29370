"""Every video LLM family of LLaMA-Factory 0.9.5 under ``stage: action_cls``, each a tiny random model built offline.

One in-process run per family (``run_exp``: LoRA ``lora_target: all``, 2 steps, then predict on the test clips),
then the saved adapter and head are loaded back from disk by ``ActionClassifier`` and must give the run's own
predictions. Qwen2-VL, InternVL and Gemma 4 are built with no spare embedding rows, so ``<ACTION>`` forces a resize.
"""

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F
from llamafactory.train.tuner import run_exp
from safetensors import safe_open
from transformers import AutoConfig, AutoTokenizer, Glm4vConfig, TrainerCallback

from ivcp.demo.families import FAMILIES, QWEN2_FAMILIES, build_tiny_family
from ivcp.demo.tiny_model import build_tiny_qwen2vl
from ivcp.inference import ActionClassifier
from ivcp.model.layers import decoder_layers
from tests.helpers import base_config, read_json, rows_seen, trainer_losses


NO_SPARE_ROWS = {"qwen2_vl", "internvl", "gemma4"}
ALL_FAMILIES = [
    "qwen2_vl",
    "qwen2_5_vl",
    "qwen3_vl",
    "qwen3_vl_moe",
    "qwen3_5",
    "qwen2_5_omni",
    "internvl",
    "gemma4",
    "llava_next_video",
    "video_llava",
]


def family_config(family: str, model_dir: str, motion_data: str, output_dir: str, **overrides):
    template = QWEN2_FAMILIES.get(family) or FAMILIES[family].template
    return base_config(
        model_dir,
        motion_data,
        output_dir,
        template=template,
        video_maxlen=4,
        max_steps=2,
        per_device_train_batch_size=2,
        save_steps=100,
        plot_loss=False,
        **overrides,
    )


def test_every_builder_is_in_the_matrix():
    assert sorted(ALL_FAMILIES) == sorted([*QWEN2_FAMILIES, *FAMILIES])


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_family_trains_saves_and_predicts(family, motion_data, tmp_path):
    model_dir = build_tiny_family(str(tmp_path / "model"), family, spare_rows=family not in NO_SPARE_ROWS)
    output_dir = tmp_path / "out"
    config = family_config(family, model_dir, motion_data, str(output_dir), eval_dataset="motion_test")
    run_exp({**config, "do_predict": True})

    losses = trainer_losses(output_dir)
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    with safe_open(str(output_dir / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any("lora_A" in key for key in keys)
    assert not any("embed_tokens" in key or "lm_head" in key for key in keys)  # <ACTION> lives in the head file

    text_config = AutoConfig.from_pretrained(model_dir).get_text_config()
    assert (text_config.vocab_size == len(AutoTokenizer.from_pretrained(model_dir))) == (family in NO_SPARE_ROWS)

    with open(output_dir / "predictions.jsonl", encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    test_examples = read_json(os.path.join(motion_data, "motion_test.json"))
    assert [record["label"] for record in records] == [example["action_label"] for example in test_examples]

    classifier = ActionClassifier.from_pretrained(model_dir, adapter=str(output_dir), device="cpu")
    videos = [os.path.join(motion_data, example["videos"][0]) for example in test_examples]
    layers = decoder_layers(classifier.model.base_model)  # not found in Qwen2.5-Omni's thinker: every row there
    assert classifier.model.pooled_mlp.enabled == (family != "qwen2_5_omni") == (layers is not None)
    last_mlp_rows = rows_seen(layers[-1].mlp) if layers is not None else []
    logits = classifier.predict_logits(videos)
    probabilities = F.softmax(logits, dim=-1)
    for record, row in zip(records, probabilities):  # the reloaded model gives the run's own predictions
        assert int(row.argmax()) == record["predicted"] or row.max() - row[record["predicted"]] < 1e-4
        for entry in record["classes"]:
            assert row[entry["class"]].item() == pytest.approx(entry["probability"], abs=1e-4)

    if layers is not None:  # the last layer's MLP ran on the pooled rows, and on every row gives the same logits
        classifier.model.pooled_mlp.enabled = False
        torch.testing.assert_close(classifier.predict_logits(videos), logits, rtol=1e-4, atol=1e-5)
        half = len(last_mlp_rows) // 2
        assert set(last_mlp_rows[:half]) == {1} and min(last_mlp_rows[half:]) > 1


def test_moe_router_loss_is_in_the_loss_and_logged(motion_data, tmp_path):
    from ivcp.data import ActionDataCollator
    from ivcp.model import load_action_model
    from tests.helpers import load_action_data

    model_dir = build_tiny_family(str(tmp_path / "model"), "qwen3_vl_moe")
    output_dir = tmp_path / "out"
    config = family_config("qwen3_vl_moe", model_dir, motion_data, str(output_dir), moe_aux_loss_coef=0.5)
    (model_args, _, finetuning_args), tokenizer_module, template, _, dataset = load_action_data(config)
    model = load_action_model(tokenizer_module["tokenizer"], model_args, finetuning_args, is_trainable=True)
    collator = ActionDataCollator(template=template, model=model.backbone, **tokenizer_module)
    batch = collator([dataset["train_dataset"][i] for i in range(2)])
    output = model(**batch)
    assert output.aux_loss is not None and output.aux_loss.item() > 0
    expected = F.cross_entropy(output.logits.float(), batch["action_labels"]) + 0.5 * output.aux_loss
    torch.testing.assert_close(output.loss, expected)

    model.router_aux_loss_coef = None  # a dense run: no router loss, nothing added
    output = model(**batch)
    assert output.aux_loss is None
    torch.testing.assert_close(output.loss, F.cross_entropy(output.logits.float(), batch["action_labels"]))

    run_exp(config)
    history = read_json(output_dir / "trainer_state.json")["log_history"]
    aux_losses = [record["aux_loss"] for record in history if "loss" in record]
    assert len(aux_losses) == 2 and all(value > 0 for value in aux_losses)


def test_unsupported_family_stops_before_training(motion_data, tmp_path):
    model_dir = tmp_path / "glm4v"
    Glm4vConfig().save_pretrained(model_dir)
    config = base_config(str(model_dir), motion_data, str(tmp_path / "out"), template="glm4v")
    with pytest.raises(ValueError, match=r"does not support the glm4v family: .*images=None.*Use Qwen3-VL"):
        run_exp(config)

    assert not (tmp_path / "out").exists()


def test_qlora_4bit_trains_saves_and_predicts(motion_data, tmp_path):
    # bitsandbytes' CPU 4-bit inference needs every linear layer at least 64 wide: a 64-d vision tower
    model_dir = build_tiny_qwen2vl(str(tmp_path / "model"), vision_hidden_size=64)
    output_dir = tmp_path / "out"
    config = base_config(
        model_dir,
        motion_data,
        str(output_dir),
        quantization_bit=4,
        max_steps=2,
        save_steps=100,
        plot_loss=False,
        eval_dataset="motion_test",
    )
    probe = QuantizationProbe()
    run_exp({**config, "do_predict": True}, callbacks=[probe])

    assert probe.four_bit_layers > 0 and probe.trainable and all(".lora_" in name for name in probe.trainable)
    assert len(trainer_losses(output_dir)) == 2
    with safe_open(str(output_dir / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any("lora_A" in key for key in keys)
    with open(output_dir / "predictions.jsonl", encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    assert len(records) == len(read_json(os.path.join(motion_data, "motion_test.json")))
    assert all(0 <= record["predicted"] < 4 for record in records)


class QuantizationProbe(TrainerCallback):
    r"""What the trainer really trained: 4-bit linear layers in the backbone, and which weights were trainable."""

    def on_train_begin(self, args, state, control, model=None, **kwargs) -> None:
        import bitsandbytes as bnb

        self.four_bit_layers = sum(isinstance(m, bnb.nn.Linear4bit) for m in model.backbone.modules())
        self.trainable = [name for name, p in model.backbone.named_parameters() if p.requires_grad]


@pytest.mark.parametrize(
    ("family", "finetuning_type"), [("gemma4", "full"), ("internvl", "freeze"), ("qwen2_5_omni", "lora")]
)
def test_family_exports_a_self_contained_classifier(family, finetuning_type, motion_data, tmp_path):
    from llamafactory.train.tuner import export_model

    model_dir = build_tiny_family(str(tmp_path / "model"), family, spare_rows=family not in NO_SPARE_ROWS)
    output_dir, export_dir = tmp_path / "out", tmp_path / "export"
    run_exp(family_config(family, model_dir, motion_data, str(output_dir), finetuning_type=finetuning_type))
    if finetuning_type == "lora":
        trained = ActionClassifier.from_pretrained(model_dir, adapter=str(output_dir), device="cpu")
        source = {"model_name_or_path": model_dir, "adapter_name_or_path": str(output_dir)}
    else:
        trained = ActionClassifier.from_pretrained(str(output_dir), device="cpu")
        source = {"model_name_or_path": str(output_dir)}

    template = QWEN2_FAMILIES.get(family) or FAMILIES[family].template
    export_model({**source, "template": template, "finetuning_type": finetuning_type, "export_dir": str(export_dir)})
    exported = ActionClassifier.from_pretrained(str(export_dir), device="cpu")  # the folder alone
    test_examples = read_json(os.path.join(motion_data, "motion_test.json"))
    videos = [os.path.join(motion_data, example["videos"][0]) for example in test_examples]
    torch.testing.assert_close(exported.predict_logits(videos), trained.predict_logits(videos), rtol=1e-4, atol=1e-5)


def test_tiny_qwen2vl_mlp_width_is_configurable(tmp_path):
    # benchmarks/vs_ms_swift.py builds the model with a 4x MLP (the default is 2x the hidden size)
    model_dir = build_tiny_qwen2vl(str(tmp_path / "model"), intermediate_size=96)
    assert AutoConfig.from_pretrained(model_dir).text_config.intermediate_size == 96
    with safe_open(os.path.join(model_dir, "model.safetensors"), "pt") as f:
        keys = f.keys()
        shapes = {key: f.get_slice(key).get_shape() for key in keys if "layers.0.mlp.up_proj" in key}
    assert list(shapes.values()) == [[96, 64]]
