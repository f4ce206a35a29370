"""Resume only from a checkpoint HF Trainer finished writing.

HF Trainer writes ``checkpoint-N`` in place, file by file (its temp-dir-and-rename attempts were reverted for
multi-GPU races), and ``get_last_checkpoint`` picks the highest N whatever its state, so a run killed during a
save would resume from a half-written checkpoint.
"""

import json
import os
import re

from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, sort_checkpoints

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
