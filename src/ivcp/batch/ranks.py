"""Which videos this process classifies, and one progress count shared by every rank of a torchrun launch.

A launch's processes (torchrun's ``RANK``/``WORLD_SIZE``) and array-job shards (``--num_shards``/``--shard_index``)
combine into ``num_shards * world_size`` parts; part ``p`` takes every ``parts``-th video from ``p`` on, so parts
balance and agree without talking. The ranks of one launch count their progress in torchrun's key-value store (the
one its rendezvous already runs, no process group), so rank 0 can draw one bar for all of them.
"""

import os
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch.distributed as dist
from tqdm import tqdm


T = TypeVar("T")


@dataclass(frozen=True)
class Placement:
    rank: int
    world_size: int
    local_rank: int
    shard_index: int
    num_shards: int

    @classmethod
    def from_env(cls, num_shards: int = 1, shard_index: int = 0) -> "Placement":
        if not 0 <= shard_index < num_shards:
            raise ValueError(f"--shard_index {shard_index} is not in [0, --num_shards {num_shards}).")

        env = os.environ
        return cls(
            int(env.get("RANK", 0)),
            int(env.get("WORLD_SIZE", 1)),
            int(env.get("LOCAL_RANK", 0)),
            shard_index,
            num_shards,
        )

    @property
    def part(self) -> int:
        return self.shard_index * self.world_size + self.rank

    @property
    def parts(self) -> int:
        return self.num_shards * self.world_size

    def take(self, items: list[T]) -> list[T]:
        return items[self.part :: self.parts]


class Progress:
    r"""Counts of this launch (every rank's, through torchrun's store); rank 0 shows them as one bar."""

    def __init__(self, placement: Placement, todo: int, skipped: int, show: bool = True) -> None:
        self.placement = placement
        self.store = _launch_store(placement) if placement.world_size > 1 else None
        self.own = {"todo": todo, "skipped": skipped, "done": 0, "failed": 0, "finished": 0}
        self._add("todo", todo)
        self._add("skipped", skipped)
        self.started = time.monotonic()
        self.bar = None
        if placement.rank == 0 and show:
            self.bar = tqdm(total=todo, desc="Classifying", unit="video", dynamic_ncols=True)

    def _add(self, key: str, amount: int) -> int:
        return self.store.add(key, amount) if self.store is not None else self.own[key]

    def advance(self, done: int, failed: int) -> None:
        self.own["done"] += done
        self.own["failed"] += failed
        self._add("done", done)
        self._add("failed", failed)
        self._refresh()

    def _refresh(self) -> None:
        if self.bar is not None:
            self.bar.total = self._add("todo", 0)
            self.bar.update(self._add("done", 0) - self.bar.n)

    def finish(self) -> dict[str, int]:
        r"""Announce this rank done; rank 0 waits for the others and returns the launch's totals."""
        self._add("finished", 1)
        if self.placement.rank == 0 and self.store is not None:
            while self.store.add("finished", 0) < self.placement.world_size:
                self._refresh()
                time.sleep(0.2)

        self._refresh()
        if self.bar is not None:
            self.bar.close()

        return {key: self._add(key, 0) for key in ("todo", "skipped", "done", "failed")}

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


def _launch_store(placement: Placement) -> dist.Store:
    r"""The store of this torchrun launch, as ``init_process_group("env://")`` would reach it."""
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        placement.world_size,
        is_master=placement.rank == 0 and not agent_store,
        timeout=timedelta(hours=24),  # ranks wait for the slowest one
        wait_for_workers=False,
    )
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")  # a restarted launch counts afresh
    return dist.PrefixStore(f"ivcp-classify/{restart}/", store)
