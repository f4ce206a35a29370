"""``action_embedding_rows: used``: decide whether training only the used embedding rows is exact, and set it up."""

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from datasets import Dataset
from peft import PeftModel
from torch import nn

from ...hparams.checks import dense_embedding_reason
from ...log import get_logger


if TYPE_CHECKING:
    from llamafactory.hparams import DataArguments
    from transformers import PreTrainedTokenizer, Seq2SeqTrainingArguments

    from ...hparams import ActionFinetuningArguments
    from ...model import ActionClassificationModel


logger = get_logger(__name__)

SCAN_BATCH = 1000


def used_token_ids(train_dataset: Dataset, tokenizer: "PreTrainedTokenizer") -> torch.Tensor:
    r"""Every token id of the tokenized training set, and the special tokens the collator may add (padding)."""
    used = {int(token) for token in tokenizer.all_special_ids}
    for batch in train_dataset.select_columns("input_ids").iter(batch_size=SCAN_BATCH):
        used.update(
            np.unique(np.concatenate([np.asarray(ids, dtype=np.int64) for ids in batch["input_ids"]])).tolist()
        )

    return torch.tensor(sorted(used), dtype=torch.long)


def _dense_reason(model: "ActionClassificationModel", train_dataset: Any, *args: Any) -> str | None:
    reason = dense_embedding_reason(*args)
    if reason is None and isinstance(model.backbone, PeftModel):
        reason = "PEFT saves a trained embedding as a module of its own"
    if reason is None and not isinstance(train_dataset, Dataset):
        reason = "the training set is not in memory"
    return reason


def train_used_embedding_rows(
    model: "ActionClassificationModel",
    train_dataset: Any,
    tokenizer: "PreTrainedTokenizer",
    data_args: "DataArguments",
    finetuning_args: "ActionFinetuningArguments",
    training_args: "Seq2SeqTrainingArguments",
) -> None:
    r"""Where the token embedding trains, train only its rows the training set uses when that is exact, else say why.

    With AdamW and ``weight_decay`` 0 a row whose gradient is always zero never changes and adds nothing to the
    gradient norm, so the trained model is the same; the table's dense gradient and AdamW state are not kept.
    The rows parameter goes into the optimizer group the table would have been in (same lr, no decay either way).
    """
    embedding = model.backbone.get_input_embeddings()
    if not training_args.do_train or not isinstance(embedding, nn.Embedding) or not embedding.weight.requires_grad:
        return  # the table does not train

    reason = _dense_reason(model, train_dataset, data_args, finetuning_args, training_args)
    if reason is None and type(embedding) is not nn.Embedding:
        reason = f"the input embedding is a {type(embedding).__name__}, not a plain lookup (nn.Embedding)"
    if reason is not None:
        logger.info_rank0(f"Training the whole token embedding table ({embedding.num_embeddings} rows): {reason}.")
        return

    rows = model.train_embedding_rows(used_token_ids(train_dataset, tokenizer))
    logger.info_rank0(
        f"Training {rows.rows.size(0)} of {embedding.num_embeddings} token embedding rows, those of the training "
        "set's tokens; the others get no gradient and stay as they are (`action_embedding_rows: all` trains all)."
    )
