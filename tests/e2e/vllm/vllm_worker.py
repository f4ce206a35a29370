"""Runs in the vLLM venv (scripts/vllm_venv.sh), not the project's: vLLM's ``LLM.classify`` on given frames.

``python vllm_worker.py JOB.json OUT.json``: JOB maps each export folder to its ``clips`` (each a ``frames`` .npy
array, T x H x W x 3 uint8, and the ``metadata`` vLLM's Qwen3-VL needs for its timestamps: which frames of the file
they are, at which fps) and ``text`` (the prompt after the video); OUT gets, per folder, each clip's probabilities and
the prompt token ids vLLM classified. One process loads each model once (a load takes ~20 s).
"""

import gc
import json
import sys

import numpy as np


def classify(model_dir: str, clips: list[dict], text: str) -> dict:
    from vllm import LLM

    llm = LLM(
        model=model_dir,
        runner="pooling",  # everything else comes from the folder: no convert, no hf_overrides
        enforce_eager=True,
        dtype="float32",
        max_model_len=2048,
        limit_mm_per_prompt={"video": 1, "image": 0},
    )
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": text}]}]
    prompt = llm.get_tokenizer().apply_chat_template(messages, tokenize=False)  # the folder's chat template
    videos = [(np.load(clip["frames"]), clip["metadata"]) for clip in clips]
    outputs = llm.classify([{"prompt": prompt, "multi_modal_data": {"video": video}} for video in videos])
    result = {
        "probs": [output.outputs.probs for output in outputs],
        "prompt_token_ids": [list(output.prompt_token_ids) for output in outputs],
        "num_labels": llm.llm_engine.model_config.hf_config.num_labels,
    }
    del llm
    gc.collect()
    return result


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as f:
        job = json.load(f)

    results = {
        model_dir: classify(model_dir, model_job["clips"], model_job["text"]) for model_dir, model_job in job.items()
    }
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
