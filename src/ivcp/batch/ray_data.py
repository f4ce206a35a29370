"""Ray Data batch inference: videos read as paths, decoded by CPU actors, classified by GPU actors, written as files.

The pipeline (``pip install 'ivcp[ray]'``)::

    ray.data.from_items(rows)                                           # {"video", "prompt", extra columns}
      .map_batches(PrepareVideos, batch_size=..., compute=ActorPoolStrategy(size=...), num_cpus=1)  # decode, CPUs
      .map_batches(ClassifyVideos, batch_size=1, compute=ActorPoolStrategy(size=...), num_gpus=...)  # the model
      .write_json(DIR)  /  .write_parquet(DIR)

A prepared batch travels between the stages as one pickled row, so the collated tensors (whose shapes differ per
batch) never go through Arrow; rows come out in the JSON form of :meth:`ActionClassifier.result`.
"""

import pickle
from typing import Any

import pyarrow as pa
import torch

from ..data.context import ActionDataError
from ..inference import ActionClassifier
from .clips import ClipSettings
from .inputs import Item


class PrepareVideos:
    r"""CPU stage: a batch of rows -> one row with each video's clips (``clips``) collated, and their outcomes.

    It holds the classifier's reader (tokenizer, processor, collator: :meth:`ActionClassifier.reader`), no weights.
    """

    def __init__(
        self,
        model: str,
        adapter: str | None = None,
        settings: dict[str, Any] | None = None,
        clips: ClipSettings | None = None,
        batch_size: int = 8,
    ) -> None:
        self.classifier = ActionClassifier.reader(model, adapter=adapter, **(settings or {}))
        self.clips, self.batch_size = clips or ClipSettings(), batch_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        videos, prompts = [row["video"] for row in rows], [row["prompt"] for row in rows]
        layout, spans, batches = self.clips.prepare(self.classifier, videos, prompts, self.batch_size)
        return pa.table({"prepared": [pickle.dumps((rows, layout, spans, list(batches)))]})


class ClassifyVideos:
    r"""Model stage (an actor per GPU): a prepared batch -> one result row per video, extra columns carried."""

    def __init__(
        self,
        model: str,
        adapter: str | None = None,
        settings: dict[str, Any] | None = None,
        top_k: int = 5,
        clips: ClipSettings | None = None,
    ) -> None:
        self.classifier = ActionClassifier.from_pretrained(model, adapter=adapter, **(settings or {}))
        self.top_k, self.clips = top_k, clips or ClipSettings()
        self.schema: pa.Schema | None = None

    def __call__(self, batch: pa.Table) -> pa.Table:
        results = []
        for prepared in batch.column("prepared").to_pylist():
            rows, layout, spans, batches = pickle.loads(prepared)
            outcomes = [row for collated, each in batches for row in self.classifier.classify_prepared(collated, each)]
            videos = [row["video"] for row in rows]
            for row, result in zip(
                rows, self.clips.join(self.classifier, videos, layout, spans, outcomes, self.top_k)
            ):
                extra = {key: value for key, value in row.items() if key not in ("video", "prompt")}
                results.append({**extra, **result})
                self.schema = self.schema or self._schema(extra)

        return pa.Table.from_pylist(results, schema=self.schema)

    def _schema(self, extra: dict[str, Any]) -> pa.Schema:
        r"""One schema for every block, whatever mix of results and errors it holds: Arrow infers from the first row.

        It is the union of a classified and a failed row of this head, with the extra columns of the input rows.
        """
        logits = torch.full((self.classifier.model.action_decoder.num_classes,), 10.0)  # every class chosen
        error = ActionDataError("example", kind="video unreadable")
        if self.clips.window is not None:
            layout, rows = [[(0.0, 1.0)], error], [logits]
        else:
            layout, rows = ([1, error], [logits]) if self.clips.test_clips > 1 else ([1, 1], [logits, error])
        samples = self.clips.join(self.classifier, ["v", "v"], layout, [(0.0, 1.0)], rows, self.top_k)
        columns = dict.fromkeys(key for sample in samples for key in sample)
        return pa.Table.from_pylist([{**columns, **extra, **sample} for sample in samples]).schema


def classify_with_ray(
    items: list[Item],
    output: str,
    model: str,
    adapter: str | None = None,
    settings: dict[str, Any] | None = None,
    top_k: int = 5,
    batch_size: int = 8,
    num_gpus: float = 1.0,
    concurrency: int = 1,
    decode_concurrency: int = 2,
    output_format: str = "jsonl",
    clips: ClipSettings | None = None,
) -> None:
    r"""Run the pipeline on the connected Ray cluster (call ``ray.init`` first) and write ``output`` (a folder)."""
    import ray

    rows = [{**item.extra, "video": item.video, "prompt": item.prompt} for item in items]
    arguments = {"model": model, "adapter": adapter, "settings": settings}
    results = (
        ray.data.from_items(rows)
        .map_batches(
            PrepareVideos,
            fn_constructor_kwargs={**arguments, "clips": clips, "batch_size": batch_size},
            batch_size=clips.videos_per_batch(batch_size) if clips else batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=decode_concurrency),
            num_cpus=1,
        )
        .map_batches(
            ClassifyVideos,
            fn_constructor_kwargs={**arguments, "top_k": top_k, "clips": clips},
            batch_size=1,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=concurrency),
            num_gpus=num_gpus,
        )
    )
    if output_format == "parquet":
        results.write_parquet(output)
    else:
        results.write_json(output, double_precision=15)  # pandas' default keeps 10 digits
