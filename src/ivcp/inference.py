"""One-call inference: ``ActionClassifier.from_pretrained(model, adapter=...).predict("clip.mp4", top_k=5)``.

It reuses the training path end to end (LLaMA-Factory's tokenizer/processor loading, the template, the
mm_plugin's video processing, the ``<ACTION>`` cut, the collator and the wrapper model), with the preprocessing
settings saved in the head's config, so what is served is what was trained.
"""

import copy
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from llamafactory.hparams import get_infer_args
from tqdm import tqdm

from .constants import ACTION_STAGE, DEFAULT_PROMPT
from .data import ActionDataCollator, ActionDatasetProcessor
from .data.clips import video_clips
from .data.context import ActionDataError, media_error
from .data.video_reader import VideoWindow, plan_video
from .data.videos import check_video
from .log import get_logger
from .model import load_action_model, load_action_tokenizer
from .model.decoding import class_names, combine_clips, decode
from .model.head_config import head_arguments, load_head_config
from .model.loader import find_head_directory, load_empty_backbone
from .model.timeline import clip_windows, timeline_result, timeline_windows
from .stage_patches import model_loading_options
from .stage_patches import register_stage as register


if TYPE_CHECKING:
    from .model import ActionClassificationModel


logger = get_logger(__name__)


def _weights_dtype(name: str | torch.dtype) -> torch.dtype | None:
    r"""``torch_dtype`` / ``infer_dtype`` as a dtype; None for ``auto`` (the checkpoint's own)."""
    if isinstance(name, torch.dtype) or name == "auto":
        return None if name == "auto" else name

    dtype = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(
            f"`torch_dtype: {name}` is not a floating-point dtype: use auto, bfloat16, float16 or float32."
        )

    return dtype


@dataclass(frozen=True)
class _Weights:
    r"""What :meth:`ActionClassifier.load_model` loads: the parsed arguments and the placement."""

    tokenizer: Any
    model_args: Any
    data_args: Any
    finetuning_args: Any
    max_memory: dict[Any, Any] | None
    dtype: torch.dtype | None


class ActionClassifier:
    def __init__(
        self,
        model: "ActionClassificationModel | None",
        encoder: ActionDatasetProcessor,
        collator: ActionDataCollator,
        weights: _Weights | None = None,
    ) -> None:
        self.model = model
        self.encoder = encoder
        self.collator = collator
        self._weights = weights

    @classmethod
    def from_pretrained(cls, model_name_or_path: str, **kwargs: Any) -> "ActionClassifier":
        r"""Load base model (+ adapter) and head: :meth:`reader`'s arguments, then :meth:`load_model`."""
        return cls.reader(model_name_or_path, **kwargs).load_model()

    @classmethod
    def reader(
        cls,
        model_name_or_path: str,
        adapter: str | None = None,
        action_decoder_path: str | None = None,
        device: str | None = None,
        device_map: str | dict[str, Any] | None = None,
        max_memory: dict[Any, Any] | None = None,
        torch_dtype: str | torch.dtype | None = None,
        **kwargs: Any,
    ) -> "ActionClassifier":
        r"""Everything but the weights: tokenizer, processor, template, collator; :meth:`load_model` loads them.

        What decodes and collates videos (:meth:`prepare`) works already, so decode workers forked now (the API's,
        ``ivcp classify``'s) hold no weights, on the GPU or off it. ``kwargs`` are LLaMA-Factory model/data arguments
        to override. Placement as LLaMA-Factory's inference: ``device_map`` ``"auto"`` (the default: spread over
        the GPUs, then CPU and disk), a dict, or ``device`` for one device; ``max_memory`` caps each device;
        ``torch_dtype`` (or LLaMA-Factory's ``infer_dtype``) the weights' dtype, the checkpoint's by default. The
        head joins the last layer's device.
        """
        register()
        head_directory = find_head_directory(action_decoder_path, [adapter] if adapter else None, model_name_or_path)
        head_config = load_head_config(head_directory) if head_directory else None
        if head_config is None:
            raise FileNotFoundError(
                f"No action_decoder_config.json in {head_directory or adapter or model_name_or_path}: pass the "
                "output_dir of an action_cls run as `adapter` (LoRA) or `model_name_or_path` (full/freeze), or as "
                "`action_decoder_path`."
            )

        args = {
            "model_name_or_path": model_name_or_path,
            "adapter_name_or_path": adapter,
            "action_decoder_path": action_decoder_path,
            "stage": ACTION_STAGE,
            **head_arguments(head_config, kwargs),  # the user's arguments win (see ivcp.model.head_config)
        }
        model_args, data_args, finetuning_args, _ = get_infer_args({k: v for k, v in args.items() if v is not None})
        if device_map is not None or device is not None:  # else LLaMA-Factory's inference default, "auto"
            model_args.device_map = device_map if device_map is not None else {"": device}
        dtype = _weights_dtype(torch_dtype if torch_dtype is not None else model_args.infer_dtype)
        tokenizer_module, template = load_action_tokenizer(model_args, data_args)
        label_names = head_config.get("label_names")
        encoder = ActionDatasetProcessor(
            template=template,
            data_args=data_args,
            num_classes=finetuning_args.num_action_classes,
            label_names=tuple(label_names) if label_names else None,
            decode_videos=False,
            dataset_media=False,
            **tokenizer_module,
        )
        empty = load_empty_backbone(tokenizer_module["tokenizer"], model_args, finetuning_args)
        collator = ActionDataCollator(template=template, model=empty, **tokenizer_module)
        weights = _Weights(tokenizer_module["tokenizer"], model_args, data_args, finetuning_args, max_memory, dtype)
        classifier = cls(None, encoder, collator, weights)
        classifier.finetuning_args = finetuning_args  # the serving settings live there (``llamafactory-cli api``)
        return classifier

    def load_model(self) -> "ActionClassifier":
        r"""Load the weights (base model, adapter, head) where :meth:`reader` was told; once. Returns self."""
        if self.model is not None:
            return self

        weights = self._weights
        with model_loading_options(max_memory=weights.max_memory, dtype=weights.dtype):
            model = load_action_model(
                weights.tokenizer,
                weights.model_args,
                weights.finetuning_args,
                is_trainable=False,
                data_args=weights.data_args,
            )
        model.place_head()  # the backbone is already where device_map put it: never moved as a whole
        self.model = model
        return self

    @property
    def names(self) -> list[str]:
        r"""The class names saved with the head, or the class ids as strings."""
        return class_names(self.model.action_decoder.num_classes, self.model.label_names)

    @property
    def video_settings(self) -> tuple[float, int]:
        r"""(video_fps, video_maxlen) the videos are sampled with: the training run's unless overridden."""
        return self.encoder.processor.video_fps, self.encoder.processor.video_maxlen

    def with_video_settings(self, video_fps: float | None, video_maxlen: int | None) -> "ActionClassifier":
        r"""The same model with other frame sampling; the plugin reads it from the processor, so that is copied."""
        settings = (video_fps or self.video_settings[0], video_maxlen or self.video_settings[1])
        if settings == self.video_settings:
            return self

        processor = copy.copy(self.encoder.processor)
        processor.video_fps, processor.video_maxlen = settings
        return ActionClassifier(
            self.model,
            replace(self.encoder, processor=processor),
            replace(self.collator, processor=processor),
            self._weights,
        )

    def _encode(self, video: str, prompt: str) -> dict[str, Any]:
        example = {
            "_prompt": [{"role": "user", "content": prompt}],
            "_response": [{"role": "assistant", "content": ""}],
            "_system": "",
            "_tools": "",
            "_images": None,
            "_videos": [video],
            "_audios": None,
        }
        where = f"video {video}"
        input_ids = self.encoder.tokenize(example, where)
        self.encoder.check_length(input_ids, where)
        return {
            "input_ids": input_ids,
            "attention_mask": [1] * len(input_ids),
            "images": None,
            "videos": [video],
            "audios": None,
        }

    def encode(self, video: str, prompt: str = DEFAULT_PROMPT) -> dict[str, Any]:
        r"""The features of one video (its tokens, counted from the file), or an ActionDataError naming it."""
        try:
            return self._encode(video, prompt)
        except Exception as err:  # whatever the reader or plugin raises, keep its kind
            raise media_error(err, None, video) from err  # the message names the file, once

    def collate(self, features: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, list[ActionDataError | None]]:
        r"""Batch encoded videos (this decodes them); a video that fails alone is left out with its error.

        The whole batch is tried first; only when it fails is each video collated alone to find the culprits, so a
        bad file costs its neighbours one retry, never their results.
        """
        try:
            return self.collator([dict(feature) for feature in features]), [None] * len(features)
        except Exception as err:  # noqa: BLE001
            logger.info(f"A batch of {len(features)} videos failed ({err}): collating them one by one.")

        errors: list[ActionDataError | None] = []
        for feature in features:
            try:
                self.collator([dict(feature)])
                errors.append(None)
            except Exception as err:  # noqa: BLE001
                errors.append(self._collate_error(err, feature["videos"][0]))

        good = [feature for feature, error in zip(features, errors) if error is None]
        return (self.collator([dict(feature) for feature in good]) if good else None), errors

    def _collate_error(self, err: Exception, video: str) -> ActionDataError:
        r"""Blame the file only when a full decode of it fails too; otherwise the plugin or processor failed."""
        try:
            check_video(video, None, None, *self.video_settings, decode=True)
        except ActionDataError as file_error:
            return file_error

        return media_error(err, None, video)

    @torch.inference_mode()
    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        r"""Class logits of a collated batch, on the CPU."""
        device = self.model.input_device
        batch = {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}
        return self.model(**batch).logits.float().cpu()

    def prepare(
        self, videos: list[str], prompts: list[str]
    ) -> tuple[dict[str, Any] | None, list[int | ActionDataError]]:
        r"""Encode and collate (this decodes) each video with its prompt, without the model.

        Returns the batch of the videos that worked (in order) and, per video, its prompt length in tokens or the
        error that stopped it; the server runs this in its decode workers and :meth:`forward` in its model thread.
        """
        outcomes: list[int | ActionDataError | None] = [None] * len(videos)
        features, positions = [], []
        for i, (video, prompt) in enumerate(zip(videos, prompts)):
            try:
                features.append(self.encode(video, prompt))
                positions.append(i)
            except ActionDataError as err:
                outcomes[i] = err

        batch, errors = self.collate(features) if features else (None, [])
        for i, feature, error in zip(positions, features, errors):
            outcomes[i] = len(feature["input_ids"]) if error is None else error

        return batch, outcomes

    def classify_batch(self, videos: list[str], prompt: str = DEFAULT_PROMPT) -> list[torch.Tensor | ActionDataError]:
        r"""Per video, its row of logits or the error that stopped it (the others are still classified)."""
        return self.classify_prepared(*self.prepare(videos, [prompt] * len(videos)))

    def classify_prepared(
        self, batch: dict[str, Any] | None, outcomes: list[int | ActionDataError]
    ) -> list[torch.Tensor | ActionDataError]:
        r"""What :meth:`classify_batch` returns, from what :meth:`prepare` returned (maybe in another process)."""
        rows = iter(self.forward(batch) if batch is not None else [])
        return [outcome if isinstance(outcome, ActionDataError) else next(rows) for outcome in outcomes]

    def clip_windows(self, video: str, test_clips: int) -> list[VideoWindow]:
        r"""``test_clips`` contiguous windows of equal length that cover ``video`` from its first frame to its end.

        Each is sampled with the whole frame budget (``video_fps``, ``video_maxlen``) by the reader's plan.
        """
        clip_windows(1.0, test_clips)  # a bad count is the caller's error, not the file's
        try:
            return video_clips(video, *self.video_settings, test_clips)  # what a multi-clip evaluation row holds
        except Exception as err:  # the reader names the file and says what to fix
            raise media_error(err, None, video) from err

    def duration(self, video: str) -> float:
        r"""Seconds of ``video`` by the reader's plan; an ActionDataError naming the file if it cannot be read."""
        try:
            return plan_video(video, *self.video_settings).duration
        except Exception as err:  # the reader names the file and says what to fix
            raise media_error(err, None, video) from err

    def split_clips(self, videos: list[str], test_clips: int) -> tuple[list[VideoWindow], list[int | ActionDataError]]:
        r"""The clips of ``videos`` in order, and per video its number of clips or the error that stopped it.

        With :meth:`join_clips` around :meth:`prepare` / :meth:`classify_prepared`, a batch runner classifies the
        clips wherever it prepares videos (``ivcp.batch`` prepares in forked workers).
        """
        clips: list[VideoWindow] = []
        layout: list[int | ActionDataError] = []
        for video in videos:
            try:
                windows = self.clip_windows(video, test_clips)
            except ActionDataError as err:
                layout.append(err)
                continue
            clips.extend(windows)
            layout.append(len(windows))
        return clips, layout

    def join_clips(
        self, layout: list[int | ActionDataError], rows: list[torch.Tensor | ActionDataError], combine: str = "mean"
    ) -> list[torch.Tensor | ActionDataError]:
        r"""Per video, its clips' ``rows`` combined by :func:`ivcp.model.decoding.combine_clips`, or the first error."""
        rows = iter(rows)
        outcomes = []
        for entry in layout:
            if isinstance(entry, ActionDataError):
                outcomes.append(entry)
                continue
            clip_rows = [next(rows) for _ in range(entry)]
            error = next((row for row in clip_rows if isinstance(row, ActionDataError)), None)
            outcomes.append(error or combine_clips(torch.stack(clip_rows), self.model.problem_type, combine))
        return outcomes

    def classify_clips(
        self, videos: list[str], prompt: str = DEFAULT_PROMPT, test_clips: int = 1, combine: str = "mean"
    ) -> list[torch.Tensor | ActionDataError]:
        r"""Per video, one row of logits for its ``test_clips`` clips together (see :meth:`clip_windows`).

        The clips of all ``videos`` go through the model as one batch. A video any clip of which fails gets that
        clip's error. With one clip this is :meth:`classify_batch` itself.
        """
        if test_clips == 1:
            return self.classify_batch(videos, prompt)

        clips, layout = self.split_clips(videos, test_clips)
        return self.join_clips(layout, self.classify_batch(clips, prompt) if clips else [], combine)

    def _batches(
        self,
        videos: list[str],
        prompt: str,
        batch_size: int,
        progress: bool,
        test_clips: int = 1,
        combine: str = "mean",
    ) -> Iterator[tuple[int, list[torch.Tensor | ActionDataError]]]:
        r"""(first video, its outcomes) per batch; a batch holds ``batch_size`` clips, whole videos' clips at least."""
        clip_windows(1.0, test_clips)  # a bad count fails before any video is read
        step = max(1, batch_size // test_clips)
        for start in tqdm(range(0, len(videos), step), disable=not progress, desc="Classifying", unit="batch"):
            yield start, self.classify_clips(videos[start : start + step], prompt, test_clips, combine)

    def predict_logits(
        self, videos: list[str], prompt: str = DEFAULT_PROMPT, batch_size: int = 8, progress: bool = False
    ) -> torch.Tensor:
        r"""Class logits of each video, shape [len(videos), num_classes]; raises the first video's error."""
        rows = [row for _, outcomes in self._batches(videos, prompt, batch_size, progress) for row in outcomes]
        for row in rows:
            if isinstance(row, ActionDataError):
                raise row

        return torch.stack(rows)

    def result(self, video: str, outcome: torch.Tensor | ActionDataError, top_k: int) -> dict[str, Any]:
        r"""The JSON-ready result of one video (:mod:`ivcp.model.decoding`'s shape), or its ``error`` and kind."""
        if isinstance(outcome, ActionDataError):
            return {"video": video, "error": str(outcome), "error_kind": outcome.kind}

        return {"video": video, **self.decode(outcome[None], top_k)[0]}

    def iter_predict(
        self,
        videos: list[str],
        top_k: int = 5,
        prompt: str = DEFAULT_PROMPT,
        batch_size: int = 8,
        progress: bool = False,
        test_clips: int = 1,
        combine: str = "mean",
    ) -> Iterator[dict[str, Any]]:
        r"""The results of :meth:`predict`, in order, each as soon as its batch is done."""
        for start, outcomes in self._batches(videos, prompt, batch_size, progress, test_clips, combine):
            for video, outcome in zip(videos[start:], outcomes):
                yield self.result(video, outcome, top_k)

    def predict(
        self,
        videos: str | list[str],
        top_k: int = 5,
        prompt: str = DEFAULT_PROMPT,
        batch_size: int = 8,
        progress: bool = False,
        test_clips: int = 1,
        combine: str = "mean",
    ) -> dict[str, Any] | list[dict[str, Any]]:
        r"""Top-k classes with probabilities and names for one video or a list of videos.

        Each result is ``{"video", "predicted", "name", "classes"}`` (see :mod:`ivcp.model.decoding`); a multi-label
        head returns every class at or above its threshold instead (``"names"``; ``top_k`` is not used).

        A video that cannot be read or processed, or whose logits are not finite, gets ``{"video", "error",
        "error_kind"}`` instead; the others are classified.

        With ``test_clips`` N > 1, each video is cut into N contiguous clips of equal length, each sampled with the
        whole frame budget, and the clips' answers are combined (``combine``: ``mean`` of probabilities, ``logits``
        or ``max``; see :func:`ivcp.model.decoding.combine_clips`); it costs N forward passes per video.
        """
        single = isinstance(videos, str)
        videos = [videos] if single else list(videos)
        results = list(self.iter_predict(videos, top_k, prompt, batch_size, progress, test_clips, combine))
        return results[0] if single else results

    def decode(self, logits: torch.Tensor, top_k: int = 5) -> list[dict[str, Any]]:
        r"""The head's own rule (:func:`ivcp.model.decoding.decode`): softmax top-k, or sigmoid >= threshold."""
        return decode(logits, self.model.problem_type, self.model.threshold, self.names, top_k)

    def timeline(
        self,
        video: str,
        window: float,
        stride: float | None = None,
        segment_threshold: float | None = None,
        top_k: int = 5,
        prompt: str = DEFAULT_PROMPT,
        batch_size: int = 8,
    ) -> dict[str, Any]:
        r"""Which class when: ``video`` classified in windows of ``window`` seconds every ``stride`` seconds.

        Returns ``{"video", <the whole-video answer>, "timeline": {"windows": [{start, end, probabilities}],
        "segments": [{start, end, label, class, score}]}}`` (see :func:`ivcp.model.timeline.timeline_result`), or
        ``{"video", "error", "error_kind"}``. Each window is sampled with the whole frame budget: one forward pass
        per window.
        """
        clips, layout = self.split_timeline([video], window, stride)
        rows = [
            row
            for i in range(0, len(clips), batch_size)
            for row in self.classify_batch(clips[i : i + batch_size], prompt)
        ]
        return self.join_timeline([video], layout, rows, top_k, segment_threshold)[0]

    def split_timeline(
        self, videos: list[str], window: float, stride: float | None = None
    ) -> tuple[list[VideoWindow], list[list[tuple[float, float]] | ActionDataError]]:
        r"""The timeline windows of ``videos`` in order, and per video its windows (seconds) or the error that stopped it.

        The timeline's :meth:`split_clips`: with :meth:`join_timeline` around :meth:`prepare` /
        :meth:`classify_prepared`, ``ivcp classify --window`` classifies the windows where it prepares videos.
        """
        clips: list[VideoWindow] = []
        layout: list[list[tuple[float, float]] | ActionDataError] = []
        for video in videos:
            try:
                spans = timeline_windows(self.duration(video), window, stride)
            except ActionDataError as err:
                layout.append(err)
                continue
            clips.extend(VideoWindow(video, start, end) for start, end in spans)
            layout.append(spans)
        return clips, layout

    def join_timeline(
        self,
        videos: list[str],
        layout: list[list[tuple[float, float]] | ActionDataError],
        rows: list[torch.Tensor | ActionDataError],
        top_k: int = 5,
        segment_threshold: float | None = None,
    ) -> list[dict[str, Any]]:
        r"""Per video, :meth:`timeline`'s result from its windows' ``rows`` (or the first error among them)."""
        rows = iter(rows)
        results = []
        for video, spans in zip(videos, layout):
            if isinstance(spans, ActionDataError):
                results.append(self.result(video, spans, top_k))
                continue
            window_rows = [next(rows) for _ in spans]
            error = next((row for row in window_rows if isinstance(row, ActionDataError)), None)
            if error is not None:
                results.append(self.result(video, error, top_k))
                continue
            model = self.model
            timeline = timeline_result(
                spans,
                torch.stack(window_rows),
                model.problem_type,
                model.threshold,
                self.names,
                top_k,
                segment_threshold,
            )
            results.append({"video": video, **timeline})
        return results
