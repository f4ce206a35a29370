"""Open the run's frame cache (``action_frame_cache``) and report what it saved after every epoch."""

from typing import TYPE_CHECKING

from transformers import TrainerCallback

from ...data.frame_cache import GB, FrameCache, default_cache_dir
from ...log import get_logger


if TYPE_CHECKING:
    from llamafactory.hparams import ModelArguments
    from transformers import Seq2SeqTrainingArguments

    from ...hparams import ActionFinetuningArguments


logger = get_logger(__name__)


def open_frame_cache(finetuning_args: "ActionFinetuningArguments", model_args: "ModelArguments") -> FrameCache | None:
    r"""The frame cache the collator reads through, or None when ``action_frame_cache: false``."""
    if not finetuning_args.action_frame_cache:
        return None

    directory = finetuning_args.action_frame_cache_dir or default_cache_dir(model_args.cache_dir)
    try:
        cache = FrameCache(directory, int(finetuning_args.action_frame_cache_max_gb * GB))
        state = cache.open()
    except OSError as err:
        raise OSError(
            f"Cannot use the frame cache folder {directory!r} ({err.strerror or err}): set `action_frame_cache_dir` "
            "to a writable folder, or `action_frame_cache: false`."
        ) from err

    logger.info_rank0(
        f"Frame cache {directory}: {state['entries']} entries, {state['bytes'] / GB:.2f} GB of "
        f"{cache.max_bytes / GB:.2f} GB (`action_frame_cache_max_gb`); videos read before are not decoded again."
    )
    return cache


class FrameCacheReport(TrainerCallback):
    r"""After each epoch: what this process read from the cache and decoded, and the cache's size."""

    def __init__(self, cache: FrameCache, training_args: "Seq2SeqTrainingArguments") -> None:
        self.cache = cache
        self.in_workers = training_args.dataloader_num_workers > 0

    def on_epoch_end(self, args, state, control, **kwargs) -> None:
        cache, size = self.cache, self.cache.state()
        counts = (
            "the dataloader workers keep their own counts"
            if self.in_workers
            else f"{cache.hits} videos read from it, {cache.decoded} decoded ({cache.stored} stored, "
            f"{cache.refused} not stored: cache or disk full, {cache.dropped} damaged entries removed)"
        )
        logger.info(
            f"Frame cache after epoch {round(state.epoch or 0)}: {counts}; it holds {size['entries']} entries, "
            f"{size['bytes'] / GB:.2f} GB of {cache.max_bytes / GB:.2f} GB."
        )
