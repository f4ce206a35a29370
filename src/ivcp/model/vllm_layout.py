"""The export layout stock vLLM serves as a classifier, and the check that a folder has it.

vLLM's pooling runner (``vllm serve DIR --runner pooling``) turns a Qwen VLM into ``*ForSequenceClassification``:
the hidden state of the LAST prompt token through one bias-free linear layer ``score``, then softmax (sigmoid when
``problem_type`` is multi-label). An IVCP ``linear`` head without bias on the ``<ACTION>`` state is exactly that once
the prompt ends at ``<ACTION>``, which the exported chat template guarantees. vLLM reads the label space from
config.json (top level and ``text_config``) and loads every tensor the weight index lists; a ``score`` weight it
does not find is initialised at random without a word, so :func:`check_vllm_export` checks what vLLM does not.
"""

import json
import os
from typing import Any, NamedTuple

from safetensors import SafetensorError, safe_open

from .action_decoder import ACTION_TOKEN, HEAD_WEIGHTS_NAME, SCORE_WEIGHT_KEY
from .head_config import HEAD_CONFIG_NAME, load_head_config
from .multi_label import MULTI_LABEL, SINGLE_LABEL


class VllmFamily(NamedTuple):
    r"""How vLLM 0.32 serves one family as a classifier."""

    architecture: str  # what vLLM converts from the family's *ForConditionalGeneration
    score_weight: str  # the name its loader gives the head (a name it cannot place stops it; none leaves it random)
    video_placeholder: str  # what the chat template writes for a video, which vLLM's processor expands


# Qwen2(.5)-VL's language model is converted itself and owns `score`; Qwen3-VL's is not, so the VLM gets `score` at
# the top level. Qwen3-VL expands <|video_pad|> into timestamped frames, each in its own vision_start/end, as
# LLaMA-Factory's template does (no outer pair).
VLLM_FAMILIES = {
    "qwen2_vl": VllmFamily(
        "Qwen2VLForSequenceClassification",
        "language_model.score.weight",
        "<|vision_start|><|video_pad|><|vision_end|>",
    ),
    "qwen2_5_vl": VllmFamily(
        "Qwen2_5_VLForSequenceClassification",
        "language_model.score.weight",
        "<|vision_start|><|video_pad|><|vision_end|>",
    ),
    "qwen3_vl": VllmFamily("Qwen3VLForSequenceClassification", "score.weight", "<|video_pad|>"),
}
INDEX_FILE = "model.safetensors.index.json"
SCORE_FILE = "score.safetensors"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
HF_PROBLEM_TYPES = {SINGLE_LABEL: "single_label_classification", MULTI_LABEL: "multi_label_classification"}
VLLM_HEAD_HINT = "train with `action_decoder_type: linear` and `action_decoder_bias: false` to serve it with vLLM"


def vllm_refusal(model_type: str | None, head_config: dict[str, Any]) -> str | None:
    r"""Why stock vLLM cannot serve this classifier as exported, or None when it can."""
    if model_type not in VLLM_FAMILIES:
        return f"vLLM export supports the families {sorted(VLLM_FAMILIES)}; this model is {model_type!r}"

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


def _check_weights(directory: str, head: dict[str, Any], score_weight: str, problems: list[str]) -> None:
    index = _read_json(os.path.join(directory, INDEX_FILE), problems)
    if index is None:
        return

    weight_map = index.get("weight_map", {})
    if weight_map.get(score_weight) != SCORE_FILE:
        problems.append(f"{INDEX_FILE} must list {score_weight} in {SCORE_FILE} (vLLM would use a random head)")

    strays = [name for name in weight_map if ("score" in name or "action" in name) and name != score_weight]
    if strays:
        problems.append(f"{INDEX_FILE} lists {strays}, which vLLM cannot place (only {score_weight} is the head)")

    if os.path.isfile(os.path.join(directory, HEAD_WEIGHTS_NAME)):
        problems.append(f"{HEAD_WEIGHTS_NAME} is in the folder: IVCP would load that head, not the one vLLM serves")

    try:
        with safe_open(os.path.join(directory, SCORE_FILE), "pt") as f:
            keys = list(f.keys())
            shape = tuple(f.get_slice(score_weight).get_shape()) if score_weight in keys else None
    except (SafetensorError, OSError) as err:
        problems.append(f"{SCORE_FILE} cannot be read ({err})")
        return

    if keys != [score_weight]:
        problems.append(f"{SCORE_FILE} must hold exactly {score_weight}, holds {keys}")
    elif shape != (head["num_classes"], head["hidden_size"]):
        problems.append(f"{score_weight} has shape {shape}, the head is {(head['num_classes'], head['hidden_size'])}")


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
    if head is None:
        return [f"no {HEAD_CONFIG_NAME}: not an export of an action classifier"]

    problems: list[str] = []
    config = _read_json(os.path.join(directory, "config.json"), problems) or {}
    refusal = vllm_refusal(config.get("model_type"), head)
    if refusal or SCORE_WEIGHT_KEY not in head:
        return [*problems, refusal or "exported in IVCP's own layout: export it again with this IVCP"]

    architecture, score_weight, _ = VLLM_FAMILIES[config["model_type"]]
    if config.get("architectures") != [architecture]:
        problems.append(
            f"config.json architectures {config.get('architectures')} must be [{architecture!r}] for vLLM to build "
            "a classifier"
        )
    if head[SCORE_WEIGHT_KEY] != score_weight:
        problems.append(
            f"{HEAD_CONFIG_NAME} names {head[SCORE_WEIGHT_KEY]!r}, vLLM loads the head as {score_weight!r}"
        )

    _check_labels("config.json", config, head, problems)
    _check_labels("config.json text_config", config.get("text_config") or {}, head, problems)
    _check_weights(directory, head, score_weight, problems)
    _check_chat_template(directory, problems)
    return problems
