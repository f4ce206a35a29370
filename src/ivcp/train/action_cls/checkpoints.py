"""Resume only from a checkpoint HF Trainer finished writing, and load a full model's weights by their saved names.

HF Trainer writes ``checkpoint-N`` in place, file by file (its temp-dir-and-rename attempts were reverted for
multi-GPU races), and ``get_last_checkpoint`` picks the highest N whatever its state, so a run killed during a
save would resume from a half-written checkpoint.
"""

import json
import os
import re

from safetensors.torch import load_file
from torch import nn
from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, sort_checkpoints
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from ...log import get_logger


logger = get_logger(__name__)


def is_complete_checkpoint(checkpoint: str) -> bool:
    r"""``Trainer._save_checkpoint`` writes ``trainer_state.json`` last: valid JSON there marks a finished save."""
    try:
        with open(os.path.join(checkpoint, TRAINER_STATE_NAME), encoding="utf-8") as f:
            json.load(f)
    except (OSError, ValueError):  # missing, or cut off while being written
        return False

    return True


def _checkpoint_step(path: str) -> int | None:
    match = re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)", os.path.basename(os.path.normpath(path)))
    return int(match.group(1)) if match else None


def _earlier_checkpoints(checkpoint: str) -> list[str]:
    r"""The ``checkpoint-M`` folders next to ``checkpoint-N`` with M < N, newest first."""
    parent, step = os.path.dirname(os.path.normpath(checkpoint)), _checkpoint_step(checkpoint)
    steps = {path: _checkpoint_step(path) for path in sort_checkpoints(parent)} if step is not None else {}
    return [path for path, other in reversed(steps.items()) if other is not None and other < step]


def complete_resume_checkpoint(checkpoint: str | None) -> str | None:
    r"""``checkpoint`` if its save finished, else the newest complete earlier checkpoint next to it."""
    if checkpoint is None or not os.path.isdir(checkpoint) or is_complete_checkpoint(checkpoint):
        return checkpoint  # HF Trainer reports a missing folder itself

    for candidate in _earlier_checkpoints(checkpoint):
        if is_complete_checkpoint(candidate):
            logger.warning_rank0(
                f"Skipping {checkpoint}: it has no valid {TRAINER_STATE_NAME}, so its save was cut short (the run "
                f"was killed while saving). Resuming from {candidate}, the newest complete checkpoint."
            )
            return candidate

    raise ValueError(
        f"Cannot resume from {checkpoint}: it has no valid {TRAINER_STATE_NAME}, so its save was cut short, and "
        "there is no complete earlier checkpoint next to it. Delete it to train from scratch, or set "
        "`overwrite_output_dir: true`."
    )


def _weight_files(checkpoint: str) -> list[str]:
    index = os.path.join(checkpoint, SAFE_WEIGHTS_INDEX_NAME)
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            return [os.path.join(checkpoint, name) for name in sorted(set(json.load(f)["weight_map"].values()))]

    single = os.path.join(checkpoint, SAFE_WEIGHTS_NAME)
    return [single] if os.path.isfile(single) else []


def load_full_checkpoint(model: nn.Module, checkpoint: str) -> bool:
    r"""Load the full model ``save_pretrained`` wrote in ``checkpoint`` into ``model``; False if there is none.

    transformers 5 saves the original checkpoint names (Qwen2-VL: ``model.embed_tokens`` for the module's
    ``model.language_model.embed_tokens``), which HF Trainer's resume loads with a plain ``load_state_dict``: no key
    matches and the run would continue from the initial weights. Renamed here as ``from_pretrained`` does.
    """
    files = _weight_files(checkpoint)
    conversions = getattr(model, "_weight_conversions", None) or []
    if not files or any(isinstance(conversion, WeightConverter) for conversion in conversions):
        return False  # not a safetensors full model, or tensors to convert: HF Trainer's own loading

    renamings = [conversion for conversion in conversions if isinstance(conversion, WeightRenaming)]
    state_dict = {}
    for path in files:
        state_dict.update({rename_source_key(key, renamings, [])[0]: v for key, v in load_file(path).items()})

    result = model.load_state_dict(state_dict, strict=False)
    tied = dict(model.named_parameters(remove_duplicate=False)).keys() - dict(model.named_parameters()).keys()
    missing = [key for key in result.missing_keys if key not in tied]  # a tied alias (lm_head) is not saved
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"its weights do not fit the model: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
        )

    return True
