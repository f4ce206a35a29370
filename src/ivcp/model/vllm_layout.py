"""The export layout stock vLLM serves as a classifier, and the check that a folder has it.

vLLM's pooling runner (``vllm serve DIR --runner pooling``) turns a Qwen VLM into ``*ForSequenceClassification``:
the hidden state of the LAST prompt token through one bias-free linear layer ``score``, then softmax (sigmoid when
``problem_type`` is multi-label). An IVCP ``linear`` head without bias on the ``<ACTION>`` state is exactly that once
the prompt ends at ``<ACTION>``, which the exported chat template guarantees. vLLM reads the label space from
config.json (top level and ``text_config``) and loads every tensor the weight index lists; a ``score`` weight it
does not find is initialised at random without a word, so :func:`check_vllm_export` checks what vLLM does not.
"""

import glob
import json
import os
from typing import Any

from safetensors import SafetensorError, safe_open

from .action_decoder import ACTION_TOKEN, HEAD_CONFIG_NAME, HEAD_WEIGHTS_NAME, SCORE_WEIGHT_KEY, load_head_config
from .multi_label import MULTI_LABEL, SINGLE_LABEL


VLLM_ARCHITECTURES = {  # config.json model_type -> the class vLLM 0.32 converts from its *ForConditionalGeneration
    "qwen2_vl": "Qwen2VLForSequenceClassification",
    "qwen2_5_vl": "Qwen2_5_VLForSequenceClassification",
    "qwen3_vl": "Qwen3VLForSequenceClassification",
}
SCORE_WEIGHT = "language_model.score.weight"  # vLLM maps it to the VLM's `score`; a top-level `score.weight` is not
SCORE_FILE = "score.safetensors"
INDEX_FILE = "model.safetensors.index.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
HF_PROBLEM_TYPES = {SINGLE_LABEL: "single_label_classification", MULTI_LABEL: "multi_label_classification"}
VLLM_HEAD_HINT = "train with `action_decoder_type: linear` and `action_decoder_bias: false` to serve it with vLLM"


def vllm_refusal(model_type: str | None, head_config: dict[str, Any]) -> str | None:
    r"""Why stock vLLM cannot serve this classifier as exported, or None when it can."""
    if model_type not in VLLM_ARCHITECTURES:
        return f"vLLM export supports the families {sorted(VLLM_ARCHITECTURES)}; this model is {model_type!r}"

    if head_config.get("decoder_type") != "linear":
        return f"vLLM's classifier layer is one linear layer, this head is `{head_config.get('decoder_type')}`: " + (
            VLLM_HEAD_HINT
        )

    if head_config.get("bias", True):
        return f"vLLM 0.32 cannot load a bias for a VLM's classifier layer, and this head has one: {VLLM_HEAD_HINT}"

    return None


def label_fields(label_names: list[str], problem_type: str) -> dict[str, Any]:
    r"""What vLLM (and transformers) read as the label space, for config.json and its ``text_config``."""
    return {
        "id2label": dict(enumerate(label_names)),
        "label2id": {name: index for index, name in enumerate(label_names)},
        "problem_type": HF_PROBLEM_TYPES[problem_type],
    }


def _read_json(path: str, problems: list[str]) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        problems.append(f"{os.path.basename(path)} cannot be read ({err})")
        return None


def _check_labels(where: str, config: dict[str, Any], head: dict[str, Any], problems: list[str]) -> None:
    num_classes = head["num_classes"]
    id2label = config.get("id2label")
    if not isinstance(id2label, dict) or sorted(map(str, id2label)) != sorted(map(str, range(num_classes))):
        problems.append(
            f"{where} needs `id2label` with the {num_classes} classes 0..{num_classes - 1}, has {id2label}"
        )
        return

    names = [id2label[key] for key in sorted(id2label, key=int)]
    if head.get("label_names") and names != list(head["label_names"]):
        problems.append(f"{where} `id2label` names {names}, the head was trained with {head['label_names']}")

    label2id = config.get("label2id")
    if label2id != {name: index for index, name in enumerate(names)}:
        problems.append(f"{where} `label2id` {label2id} does not invert `id2label`")

    wanted = HF_PROBLEM_TYPES.get(head.get("problem_type", SINGLE_LABEL))
    if config.get("problem_type") != wanted:
        problems.append(f"{where} has problem_type {config.get('problem_type')!r}, the head needs {wanted!r}")


def _check_weights(directory: str, head: dict[str, Any], problems: list[str]) -> None:
    index = _read_json(os.path.join(directory, INDEX_FILE), problems)
    if index is None:
        return

    weight_map = index.get("weight_map", {})
    if weight_map.get(SCORE_WEIGHT) != SCORE_FILE:
        problems.append(f"{INDEX_FILE} must list {SCORE_WEIGHT} in {SCORE_FILE} (vLLM would use a random head)")

    strays = [name for name in weight_map if ("score" in name or "action" in name) and name != SCORE_WEIGHT]
    if strays:
        problems.append(f"{INDEX_FILE} lists {strays}, which vLLM cannot place (only {SCORE_WEIGHT} is the head)")

    unlisted = sorted(
        os.path.basename(path)
        for path in glob.glob(os.path.join(directory, "*.safetensors"))
        if os.path.basename(path) not in set(weight_map.values())
    )
    if HEAD_WEIGHTS_NAME in unlisted:
        problems.append(f"{HEAD_WEIGHTS_NAME} is in the folder: vLLM stops on it")

    try:
        with safe_open(os.path.join(directory, SCORE_FILE), "pt") as f:
            keys = list(f.keys())
            shape = tuple(f.get_slice(SCORE_WEIGHT).get_shape()) if SCORE_WEIGHT in keys else None
    except (SafetensorError, OSError) as err:
        problems.append(f"{SCORE_FILE} cannot be read ({err})")
        return

    if keys != [SCORE_WEIGHT]:
        problems.append(f"{SCORE_FILE} must hold exactly {SCORE_WEIGHT}, holds {keys}")
    elif shape != (head["num_classes"], head["hidden_size"]):
        problems.append(f"{SCORE_WEIGHT} has shape {shape}, the head is {(head['num_classes'], head['hidden_size'])}")


def _check_chat_template(directory: str, problems: list[str]) -> None:
    r"""A user turn of a video and a prompt ending at ``<ACTION>`` must render to a prompt that ends there."""
    from transformers import AutoTokenizer

    if not os.path.isfile(os.path.join(directory, CHAT_TEMPLATE_FILE)):
        problems.append(f"{CHAT_TEMPLATE_FILE} is missing: vLLM would pool the wrong token")
        return

    tokenizer = AutoTokenizer.from_pretrained(directory)
    content = [{"type": "video"}, {"type": "text", "text": f"What is shown?{ACTION_TOKEN}"}]
    try:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False)
    except Exception as err:  # noqa: BLE001  (jinja raises many kinds)
        problems.append(f"{CHAT_TEMPLATE_FILE} fails on a video + prompt user turn ({err})")
        return

    if not prompt.endswith(ACTION_TOKEN):
        problems.append(
            f"{CHAT_TEMPLATE_FILE} renders a prompt that does not end at {ACTION_TOKEN}: ...{prompt[-60:]!r}"
        )


def check_vllm_export(directory: str) -> list[str]:
    r"""Every way ``directory`` differs from a classifier vLLM serves as IVCP does; empty when it is one."""
    head = load_head_config(directory)
    if head is None or head.get(SCORE_WEIGHT_KEY) != SCORE_WEIGHT:
        return [f"{HEAD_CONFIG_NAME} does not describe a vLLM export (export a linear head without bias)"]

    problems: list[str] = []
    config = _read_json(os.path.join(directory, "config.json"), problems)
    if config is not None:
        model_type = config.get("model_type")
        refusal = vllm_refusal(model_type, head)
        if refusal:
            problems.append(refusal)
        elif config.get("architectures") != [VLLM_ARCHITECTURES[model_type]]:
            problems.append(
                f"config.json architectures {config.get('architectures')} must be "
                f"[{VLLM_ARCHITECTURES[model_type]!r}] for vLLM to build a classifier"
            )

        _check_labels("config.json", config, head, problems)
        _check_labels("config.json text_config", config.get("text_config") or {}, head, problems)

    _check_weights(directory, head, problems)
    _check_chat_template(directory, problems)
    return problems
