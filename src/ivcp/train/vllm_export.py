"""Turn LLaMA-Factory's export of an action classifier into the folder stock vLLM serves (:mod:`..model.vllm_layout`).

The merged model LLaMA-Factory wrote stays as it is; this adds the head under the name vLLM's loader gives the
family's ``score`` (in its own ``score.safetensors``, listed in the weight index), the label space and the ``*ForSequenceClassification``
architecture in config.json, a chat template whose prompt ends at ``<ACTION>``, and the training run's video sizing
in the processor config. ``ActionClassifier`` loads the same folder: the head config names the score tensor.
"""

import json
import os
from typing import TYPE_CHECKING, Any

from llamafactory.data.template import TEMPLATES
from safetensors.torch import save_file

from ..model.action_decoder import ACTION_TOKEN, SCORE_WEIGHT_KEY
from ..model.head_config import PREPROCESSING, save_head_config
from ..model.vllm_layout import (
    CHAT_TEMPLATE_FILE,
    INDEX_FILE,
    SCORE_FILE,
    VLLM_FAMILIES,
    check_vllm_export,
    label_fields,
    vllm_refusal,
)
from .action_cls.metric import class_names


if TYPE_CHECKING:
    from transformers import PreTrainedTokenizer

    from ..model import ActionClassificationModel


_SENTINEL = "\x00IVCP_USER_TURN\x00"


def _read_json(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _write_json(path: str, data: dict[str, Any]) -> None:
    tmp_path = f"{path}.tmp.{os.getpid()}"
    with open(tmp_path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp_path, path)


def prompt_prefix(tokenizer: "PreTrainedTokenizer", template_name: str) -> str:
    r"""The text the training template puts before the user's content (system turn and user header)."""
    if template_name not in TEMPLATES:
        raise ValueError(f"Unknown template {template_name!r} in the head's preprocessing: export needs it.")

    messages = [{"role": "user", "content": _SENTINEL}, {"role": "assistant", "content": ""}]
    prompt_ids, _ = TEMPLATES[template_name].encode_oneturn(tokenizer, messages)
    return tokenizer.decode(prompt_ids, skip_special_tokens=False).split(_SENTINEL)[0]


def chat_template(prefix: str, video_placeholder: str) -> str:
    r"""One user turn of videos and text, rendered as in training and ended at the last ``<ACTION>``.

    vLLM's LAST pooling then reads the ``<ACTION>`` state IVCP's head was trained on; any other turn or content is
    refused with a message, since it would be classified from a prompt training never saw.
    """
    fail = "{{ raise_exception('%s') }}"
    return (
        "{%- if messages | length != 1 or messages[0]['role'] != 'user' -%}"
        + fail % "An IVCP classifier takes one user message: a video and a prompt ending with <ACTION>."
        + "{%- endif -%}{%- set content = messages[0]['content'] -%}{%- set ns = namespace(text='') -%}"
        "{%- if content is string -%}{%- set ns.text = content -%}{%- else -%}{%- for part in content -%}"
        "{%- if part['type'] in ['video', 'video_url'] -%}{%- set ns.text = ns.text ~ '" + video_placeholder + "' -%}"
        "{%- elif part['type'] == 'text' -%}{%- set ns.text = ns.text ~ part['text'] -%}{%- else -%}"
        + fail
        % "An IVCP video classifier takes video and text parts only."
        + "{%- endif -%}{%- endfor -%}{%- endif -%}"
        "{%- if not ns.text.endswith('"
        + ACTION_TOKEN
        + "') -%}"
        + fail % f"End the prompt with {ACTION_TOKEN}, after the video, as in training."
        + "{%- endif -%}"
        + json.dumps(prefix)[1:-1].join(['{{- "', '" -}}'])
        + "{{- ns.text -}}"
    )


def _video_processor(config: dict[str, Any], preprocessing: dict[str, Any]) -> None:
    r"""Training's frame sizing and sampling in the video processor's settings (what vLLM's processor reads)."""
    size = config.get("size")
    if isinstance(size, dict) and "longest_edge" in size and preprocessing.get("video_max_pixels"):
        size["longest_edge"] = min(size["longest_edge"], preprocessing["video_max_pixels"])
        size["shortest_edge"] = max(size.get("shortest_edge", 0), preprocessing.get("video_min_pixels") or 0)

    if preprocessing.get("video_fps"):
        config["fps"] = preprocessing["video_fps"]
    if preprocessing.get("video_maxlen"):
        config["max_frames"] = preprocessing["video_maxlen"]


def _write_processor_settings(export_dir: str, preprocessing: dict[str, Any]) -> None:
    path = os.path.join(export_dir, "processor_config.json")  # transformers 5 keeps the video processor in it
    if os.path.isfile(path):
        config = _read_json(path)
        if isinstance(config.get("video_processor"), dict):
            _video_processor(config["video_processor"], preprocessing)
            _write_json(path, config)


def _write_score(export_dir: str, model: "ActionClassificationModel", score_weight: str) -> None:
    weight = model.action_decoder.net.weight.detach().float().cpu().contiguous()
    save_file({score_weight: weight}, os.path.join(export_dir, SCORE_FILE), metadata={"format": "pt"})
    index_path = os.path.join(export_dir, INDEX_FILE)
    if os.path.isfile(index_path):
        index = _read_json(index_path)
    else:  # one file: an index makes vLLM load exactly the model and the score files
        from safetensors import safe_open

        with safe_open(os.path.join(export_dir, "model.safetensors"), "pt") as f:
            index = {"metadata": {}, "weight_map": dict.fromkeys(f.keys(), "model.safetensors")}

    index["weight_map"][score_weight] = SCORE_FILE
    files = set(index["weight_map"].values())
    index.setdefault("metadata", {})["total_size"] = sum(os.path.getsize(os.path.join(export_dir, f)) for f in files)
    _write_json(index_path, index)


def write_vllm_export(
    export_dir: str, model: "ActionClassificationModel", tokenizer: "PreTrainedTokenizer"
) -> str | None:
    r"""Make LLaMA-Factory's export in ``export_dir`` a folder vLLM serves; the reason it cannot, else None.

    When vLLM cannot serve the head (see :func:`vllm_refusal`), nothing is written and the caller saves the head in
    IVCP's own layout.
    """
    config_path = os.path.join(export_dir, "config.json")
    config = _read_json(config_path)
    head_config = {**model.action_decoder.get_config(), **model.head_config()}
    reason = vllm_refusal(config.get("model_type"), head_config)
    preprocessing = head_config.get(PREPROCESSING) or {}  # the training run's data settings, saved with the head
    if reason is None and not preprocessing.get("template"):
        reason = "the head's config does not name the chat template it was trained with (retrain to record it)"
    if reason is not None:
        return reason

    architecture, score_weight, video_placeholder = VLLM_FAMILIES[config["model_type"]]
    with open(os.path.join(export_dir, CHAT_TEMPLATE_FILE), "w", encoding="utf-8") as f:
        f.write(chat_template(prompt_prefix(tokenizer, preprocessing["template"]), video_placeholder))
    _write_processor_settings(export_dir, preprocessing)
    _write_score(export_dir, model, score_weight)
    labels = label_fields(class_names(model.action_decoder.num_classes, model.label_names), model.problem_type)
    config.update(architectures=[architecture], **labels)
    if isinstance(config.get("text_config"), dict):
        config["text_config"].update(labels)
    _write_json(config_path, config)
    save_head_config(export_dir, {**head_config, SCORE_WEIGHT_KEY: score_weight})
    problems = check_vllm_export(export_dir)
    if problems:
        raise RuntimeError(f"The vLLM export in {export_dir} is not servable: " + "; ".join(problems))

    return None
