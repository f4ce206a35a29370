"""Train only the token-embedding rows the training data uses, the rest of the table frozen.

With AdamW and no weight decay, a row whose gradient is always zero never moves (its moments stay 0, so does its
update) and adds nothing to the gradient norm: training the used rows alone gives the same model as training the
whole table, without the table's dense gradient and optimizer state (151,936 x hidden each, for Qwen2-VL). The
policy of when that holds lives in the trainer; this module is the mechanism.
"""

import torch
from torch import nn


class EmbeddingRows(nn.Module):
    r"""A trainable copy of some rows of a plain ``nn.Embedding``'s table, written into its output by a forward hook.

    Only a plain lookup: a subclass may transform the rows (Gemma scales them), which the hook would bypass.

    The table itself is frozen; :meth:`write_into_table` copies the trained rows back before anything is saved,
    and :meth:`read_from_table` re-reads them after a checkpoint was loaded into the table.
    """

    def __init__(self, embedding: nn.Embedding, token_ids: torch.Tensor) -> None:
        super().__init__()
        weight = embedding.weight
        self.embedding = [embedding]  # in a list: not a submodule, so its table is not a second time in state_dict
        ids = torch.unique(token_ids.to(device=weight.device, dtype=torch.long))
        self.padding_idx = embedding.padding_idx  # its row never trains in the table: it stays there
        ids = ids[ids != self.padding_idx] if self.padding_idx is not None else ids
        self.register_buffer("token_ids", ids, persistent=False)
        index = torch.full((weight.size(0),), -1, dtype=torch.long, device=weight.device)
        index[ids] = torch.arange(ids.numel(), device=weight.device)
        self.register_buffer("row_index", index, persistent=False)  # token id -> row, -1: from the frozen table
        self.rows = nn.Parameter(weight.detach()[ids].clone())
        weight.requires_grad_(False)
        self.handle = embedding.register_forward_hook(self._write_rows)

    @property
    def table(self) -> torch.Tensor:
        return self.embedding[0].weight

    def _write_rows(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        index = self.row_index.to(args[0].device)[args[0]]
        rows = self.rows[index.clamp(min=0)].to(output.device, output.dtype)
        return torch.where((index >= 0).unsqueeze(-1).to(output.device), rows, output)

    def unused_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        r"""The ids of ``input_ids`` that have no trainable row (sorted, unique)."""
        unused = torch.unique(input_ids[self.row_index.to(input_ids.device)[input_ids] < 0])
        return unused[unused != self.padding_idx] if self.padding_idx is not None else unused

    @torch.no_grad()
    def write_into_table(self) -> None:
        self.table[self.token_ids.to(self.table.device)] = self.rows.detach().to(self.table.device, self.table.dtype)

    @torch.no_grad()
    def read_from_table(self) -> None:
        self.rows.copy_(self.table[self.token_ids.to(self.table.device)].to(self.rows.device, self.rows.dtype))
