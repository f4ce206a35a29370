"""One-call inference: ``ActionClassifier.from_pretrained(model, adapter=...).predict("clip.mp4", top_k=5)``.

It reuses the training path end to end (LLaMA-Factory's tokenizer/processor loading, the template, the
mm_plugin's video processing, the ``<ACTION>`` cut, the collator and the wrapper model), with the preprocessing
settings saved in the head's config, so what is served is what was trained.
"""

from typing import TYPE_CHECKING, Any

import torch
from llamafactory.hparams import get_infer_args
from tqdm import tqdm

from . import ACTION_STAGE, DEFAULT_PROMPT, register
from .data import ActionDataCollator, ActionDatasetProcessor
from .model import load_action_model, load_action_tokenizer
from .model.action_decoder import head_arguments, load_head_config
from .model.loader import find_head_directory
from .train.action_cls.metric import class_names, rank_classes


if TYPE_CHECKING:
    from .model import ActionClassificationModel


class ActionClassifier:
    def __init__(
        self, model: "ActionClassificationModel", encoder: ActionDatasetProcessor, collator: ActionDataCollator
    ) -> None:
        self.model = model
        self.encoder = encoder
        self.collator = collator
        self.names = class_names(model.action_decoder.num_classes, model.label_names)

    @classmethod
    def from_pretrained(
        cls,
        model_name_or_path: str,
        adapter: str | None = None,
        action_decoder_path: str | None = None,
        device: str | None = None,
        **kwargs: Any,
    ) -> "ActionClassifier":
        r"""Load base model (+ adapter) and head; ``kwargs`` are LLaMA-Factory model/data arguments to override."""
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
            **head_arguments(head_config),
            **kwargs,
        }
        model_args, data_args, finetuning_args, _ = get_infer_args({k: v for k, v in args.items() if v is not None})
        model_args.device_map = None  # one device, chosen below: "auto" would shard the tiny head away
        tokenizer_module, template = load_action_tokenizer(model_args, data_args)
        model = load_action_model(tokenizer_module["tokenizer"], model_args, finetuning_args, is_trainable=False)
        model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        encoder = ActionDatasetProcessor(
            template=template,
            data_args=data_args,
            num_classes=finetuning_args.num_action_classes,
            label_names=tuple(model.label_names) if model.label_names else None,
            decode_videos=False,
            **tokenizer_module,
        )
        collator = ActionDataCollator(template=template, model=model.backbone, **tokenizer_module)
        return cls(model, encoder, collator)

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

    @torch.inference_mode()
    def predict_logits(
        self, videos: list[str], prompt: str = DEFAULT_PROMPT, batch_size: int = 8, progress: bool = False
    ):
        r"""Class logits of each video, shape [len(videos), num_classes]."""
        device = next(self.model.action_decoder.parameters()).device
        outputs = []
        for start in tqdm(range(0, len(videos), batch_size), disable=not progress, desc="Classifying", unit="batch"):
            batch = self.collator([self._encode(video, prompt) for video in videos[start : start + batch_size]])
            batch = {
                key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()
            }
            outputs.append(self.model(**batch).logits.float().cpu())

        return torch.cat(outputs)

    def predict(
        self,
        videos: str | list[str],
        top_k: int = 5,
        prompt: str = DEFAULT_PROMPT,
        batch_size: int = 8,
        progress: bool = False,
    ) -> dict[str, Any] | list[dict[str, Any]]:
        r"""Top-k classes with probabilities (and names when known) for one video or a list of videos."""
        single = isinstance(videos, str)
        video_list = [videos] if single else list(videos)
        ranked = rank_classes(self.predict_logits(video_list, prompt, batch_size, progress), top_k, self.names)
        results = [
            {"video": video, "predicted": top[0]["class"], "name": top[0]["name"], "top_k": top}
            for video, top in zip(video_list, ranked)
        ]

        return results[0] if single else results
