"""Tiny random models of every video LLM family LLaMA-Factory 0.9.5 trains, built offline from configs.

Each family uses its real transformers 5.6 classes and processor, and the one tokenizer recipe of
:func:`ivcp.demo.tiny_model.train_tokenizer` with the family's special tokens. LLMs are 64-d and 2 layers deep, vision
towers depth 1-2, and an 8-frame 64x64 clip becomes a few dozen video tokens, so a 2-step run takes seconds.

``spare_rows=False`` fills the embedding exactly (as Gemma-style checkpoints do), so adding ``<ACTION>`` forces an
embedding resize.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import GenerationConfig, PreTrainedTokenizerBase

from .tiny_model import (
    SPECIAL_TOKENS,
    TEXT_HIDDEN_SIZE,
    _fix_tokenizer_config,
    _vocab_rows,
    build_tiny_qwen2vl,
    train_tokenizer,
)


QWEN_VIDEO_PIXELS = {"shortest_edge": 32 * 32, "longest_edge": 32 * 32 * 64}


@dataclass(frozen=True)
class Family:
    r"""What it takes to build one family: tokens, config, model class and processor."""

    name: str
    template: str
    model_class: str
    make_config: Callable[[PreTrainedTokenizerBase, int], Any]
    make_processor: Callable[[PreTrainedTokenizerBase], Any]
    special_tokens: tuple[str, ...] = SPECIAL_TOKENS
    named_tokens: dict[str, str] = field(default_factory=dict)
    eos_token: str = "<|im_end|>"
    pad_token: str = "<|endoftext|>"
    extra_files: tuple[str, ...] = ()


def _ids(tokenizer: PreTrainedTokenizerBase, **tokens: str) -> dict[str, int]:
    return {key: tokenizer.convert_tokens_to_ids(token) for key, token in tokens.items()}


def _text_config(tokenizer: PreTrainedTokenizerBase, vocab_size: int, **overrides: Any) -> dict[str, Any]:
    r"""The shared tiny LLM: 64-d, 2 layers, 4 heads of 16 (2 key/value heads)."""
    return {
        "vocab_size": vocab_size,
        "hidden_size": TEXT_HIDDEN_SIZE,
        "intermediate_size": 2 * TEXT_HIDDEN_SIZE,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": TEXT_HIDDEN_SIZE // 4,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        **overrides,
    }


def _qwen_vision_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    return _ids(
        tokenizer,
        image_token_id="<|image_pad|>",
        video_token_id="<|video_pad|>",
        vision_start_token_id="<|vision_start|>",
        vision_end_token_id="<|vision_end|>",
    )


def _qwen3_vision(**overrides: Any) -> dict[str, Any]:
    return {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": TEXT_HIDDEN_SIZE,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "num_position_embeddings": 64,
        **overrides,
    }


MROPE_16 = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3], "mrope_interleaved": True}


def _qwen3_vl_config(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> Any:
    from transformers import Qwen3VLConfig

    return Qwen3VLConfig(
        text_config=_text_config(tokenizer, vocab_size, rope_parameters=MROPE_16),
        vision_config=_qwen3_vision(deepstack_visual_indexes=[0]),
        tie_word_embeddings=False,
        **_qwen_vision_ids(tokenizer),
    )


def _qwen3_vl_moe_config(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> Any:
    from transformers import Qwen3VLMoeConfig

    text_config = _text_config(
        tokenizer,
        vocab_size,
        rope_parameters=MROPE_16,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        decoder_sparse_step=1,
        router_aux_loss_coef=0.01,
    )
    return Qwen3VLMoeConfig(
        text_config=text_config,
        vision_config=_qwen3_vision(deepstack_visual_indexes=[0]),
        tie_word_embeddings=False,
        **_qwen_vision_ids(tokenizer),
    )


def _qwen3_5_config(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> Any:
    from transformers import Qwen3_5Config

    text_config = _text_config(
        tokenizer,
        vocab_size,
        head_dim=32,  # partial rotary 0.25: 8 rotary dims, mrope over 4 pairs
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 1000000.0,
            "mrope_section": [2, 1, 1],
            "mrope_interleaved": True,
            "partial_rotary_factor": 0.25,
        },
        layer_types=["linear_attention", "full_attention"],
        linear_conv_kernel_dim=4,
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
    )
    return Qwen3_5Config(
        text_config=text_config,
        vision_config=_qwen3_vision(),
        tie_word_embeddings=False,
        **_qwen_vision_ids(tokenizer),
    )


def _qwen3_vl_processor(tokenizer: PreTrainedTokenizerBase) -> Any:
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    common = {"patch_size": 16, "temporal_patch_size": 2, "merge_size": 2}
    return Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=dict(QWEN_VIDEO_PIXELS), **common),
        video_processor=Qwen3VLVideoProcessor(size=dict(QWEN_VIDEO_PIXELS), **common),
        tokenizer=tokenizer,
    )


OMNI_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|AUDIO|>",
    "<|audio_bos|>",
    "<|audio_eos|>",
    "<|IMAGE|>",
    "<|vision_bos|>",
    "<|vision_eos|>",
    "<|VIDEO|>",
)


def _qwen2_5_omni_config(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> Any:
    from transformers import Qwen2_5OmniConfig

    ids = _ids(
        tokenizer,
        audio_token_id="<|AUDIO|>",
        image_token_id="<|IMAGE|>",
        video_token_id="<|VIDEO|>",
        vision_start_token_id="<|vision_bos|>",
        vision_end_token_id="<|vision_eos|>",
        audio_start_token_id="<|audio_bos|>",
        audio_end_token_id="<|audio_eos|>",
    )
    text_config = _text_config(
        tokenizer,
        vocab_size,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
        use_sliding_window=False,
    )
    thinker_config = {
        "text_config": text_config,
        "vision_config": {
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": TEXT_HIDDEN_SIZE,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [1],
        },
        "audio_config": {
            "num_mel_bins": 128,
            "encoder_layers": 1,
            "encoder_attention_heads": 2,
            "encoder_ffn_dim": 64,
            "d_model": 32,
            "output_dim": TEXT_HIDDEN_SIZE,
            "max_source_positions": 1500,
            "n_window": 100,
        },
        "position_id_per_seconds": 25,
        "seconds_per_chunk": 2,
        **ids,
    }
    return Qwen2_5OmniConfig(thinker_config=thinker_config, enable_audio_output=False)


def _qwen2_5_omni_processor(tokenizer: PreTrainedTokenizerBase) -> Any:
    from transformers import (
        Qwen2_5OmniProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
        WhisperFeatureExtractor,
    )

    common = {"patch_size": 14, "temporal_patch_size": 2, "merge_size": 2}
    size = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 64}
    return Qwen2_5OmniProcessor(
        image_processor=Qwen2VLImageProcessor(size=dict(size), **common),
        video_processor=Qwen2VLVideoProcessor(size=dict(size), **common),
        feature_extractor=WhisperFeatureExtractor(feature_size=128),
        tokenizer=tokenizer,
    )


INTERNVL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>")


def _internvl_config(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> Any:
    from transformers import InternVLConfig

    vision_config = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": [56, 56],
        "patch_size": [14, 14],
    }
    text_config = {"model_type": "qwen2", **_text_config(tokenizer, vocab_size, use_sliding_window=False)}
    return InternVLConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
        downsample_ratio=0.5,
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )


def _internvl_processor(tokenizer: PreTrainedTokenizerBase) -> Any:
    from transformers import GotOcr2ImageProcessor, InternVLProcessor, InternVLVideoProcessor

    size = {"height": 56, "width": 56}
    return InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(size=dict(size), crop_to_patches=False),
        video_processor=InternVLVideoProcessor(size=dict(size)),
        tokenizer=tokenizer,
        image_seq_length=4,  # (56 / 14) ** 2 * 0.5 ** 2
    )


LLAVA_TOKENS = ("<|endoftext|>", "<|im_end|>", "<image>", "<video>")


def _clip_vision(**overrides: Any) -> dict[str, Any]:
    return {
        "model_type": "clip_vision_model",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 56,
        "patch_size": 14,
        "projection_dim": 32,
        **overrides,
    }


def _llava_next_video_config(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> Any:
    from transformers import LlavaNextVideoConfig

    return LlavaNextVideoConfig(
        vision_config=_clip_vision(),
        text_config={"model_type": "llama", **_text_config(tokenizer, vocab_size)},
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        vision_feature_layer=-1,
        image_grid_pinpoints=[[56, 56]],
        spatial_pool_stride=2,
        tie_word_embeddings=False,
    )


def _llava_next_video_processor(tokenizer: PreTrainedTokenizerBase) -> Any:
    from transformers import LlavaNextImageProcessor, LlavaNextVideoProcessor, LlavaNextVideoVideoProcessor

    size, crop = {"shortest_edge": 56}, {"height": 56, "width": 56}
    return LlavaNextVideoProcessor(
        video_processor=LlavaNextVideoVideoProcessor(size=dict(size), crop_size=dict(crop)),
        image_processor=LlavaNextImageProcessor(
            size=dict(size), crop_size=dict(crop), image_grid_pinpoints=[[56, 56]]
        ),
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )


def _video_llava_config(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> Any:
    from transformers import VideoLlavaConfig

    return VideoLlavaConfig(
        vision_config=_clip_vision(),
        text_config={"model_type": "llama", **_text_config(tokenizer, vocab_size)},
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )


def _video_llava_processor(tokenizer: PreTrainedTokenizerBase) -> Any:
    from transformers import VideoLlavaImageProcessor, VideoLlavaProcessor, VideoLlavaVideoProcessor

    size, crop = {"shortest_edge": 56}, {"height": 56, "width": 56}
    return VideoLlavaProcessor(
        image_processor=VideoLlavaImageProcessor(size=dict(size), crop_size=dict(crop)),
        video_processor=VideoLlavaVideoProcessor(size=dict(size), crop_size=dict(crop)),
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )


QWEN2_FAMILIES = {"qwen2_vl": "qwen2_vl", "qwen2_5_vl": "qwen2_vl"}  # family -> template (built by tiny_model)
FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family("qwen3_vl", "qwen3_vl", "Qwen3VLForConditionalGeneration", _qwen3_vl_config, _qwen3_vl_processor),
        Family(
            "qwen3_vl_moe", "qwen3_vl", "Qwen3VLMoeForConditionalGeneration", _qwen3_vl_moe_config, _qwen3_vl_processor
        ),
        Family("qwen3_5", "qwen3_5", "Qwen3_5ForConditionalGeneration", _qwen3_5_config, _qwen3_vl_processor),
        Family(
            "qwen2_5_omni",
            "qwen2_omni",
            "Qwen2_5OmniForConditionalGeneration",
            _qwen2_5_omni_config,
            _qwen2_5_omni_processor,
            special_tokens=OMNI_TOKENS,
            named_tokens={
                "image_token": "<|IMAGE|>",
                "audio_token": "<|AUDIO|>",
                "video_token": "<|VIDEO|>",
                "vision_bos_token": "<|vision_bos|>",
                "vision_eos_token": "<|vision_eos|>",
                "audio_bos_token": "<|audio_bos|>",
                "audio_eos_token": "<|audio_eos|>",
            },
            extra_files=("spk_dict.pt",),
        ),
        Family(
            "internvl",
            "intern_vl",
            "InternVLForConditionalGeneration",
            _internvl_config,
            _internvl_processor,
            special_tokens=INTERNVL_TOKENS,
            named_tokens={
                "start_image_token": "<img>",
                "end_image_token": "</img>",
                "context_image_token": "<IMG_CONTEXT>",
                "video_token": "<video>",
            },
        ),
        Family(
            "llava_next_video",
            "llava_next_video",
            "LlavaNextVideoForConditionalGeneration",
            _llava_next_video_config,
            _llava_next_video_processor,
            special_tokens=LLAVA_TOKENS,
            named_tokens={"image_token": "<image>", "video_token": "<video>"},
            eos_token="<|im_end|>",
        ),
        Family(
            "video_llava",
            "video_llava",
            "VideoLlavaForConditionalGeneration",
            _video_llava_config,
            _video_llava_processor,
            special_tokens=LLAVA_TOKENS,
            named_tokens={"image_token": "<image>", "video_token": "<video>"},
        ),
    )
}


GEMMA4_TOKENS = (
    "<pad>",
    "<eos>",
    "<bos>",
    "<|turn>",
    "<turn|>",
    "<|image>",
    "<image|>",
    "<|image|>",
    "<|video|>",
    "<|audio>",
    "<audio|>",
    "<|audio|>",
)


def _gemma4_config(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> Any:
    from transformers import Gemma4Config

    text_config = _text_config(
        tokenizer,
        vocab_size,
        bos_token_id=tokenizer.convert_tokens_to_ids("<bos>"),
        hidden_activation="gelu_pytorch_tanh",
        layer_types=["sliding_attention", "full_attention"],
        sliding_window=64,
        global_head_dim=16,
        num_global_key_value_heads=2,
        vocab_size_per_layer_input=vocab_size,
        hidden_size_per_layer_input=16,
        final_logit_softcapping=30.0,
        tie_word_embeddings=True,  # as Gemma's checkpoints
    )
    vision_config = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "patch_size": 16,
        "pooling_kernel_size": 3,
        "position_embedding_size": 256,
    }
    return Gemma4Config(
        text_config=text_config,
        vision_config=vision_config,
        audio_config=None,
        tie_word_embeddings=True,
        **_ids(
            tokenizer,
            boi_token_id="<|image>",
            eoi_token_id="<image|>",
            image_token_id="<|image|>",
            video_token_id="<|video|>",
            boa_token_id="<|audio>",
            eoa_token_index="<audio|>",
            audio_token_id="<|audio|>",
        ),
    )


def _gemma4_processor(tokenizer: PreTrainedTokenizerBase) -> Any:
    from transformers import Gemma4AudioFeatureExtractor, Gemma4ImageProcessor, Gemma4Processor, Gemma4VideoProcessor

    return Gemma4Processor(
        feature_extractor=Gemma4AudioFeatureExtractor(),
        image_processor=Gemma4ImageProcessor(patch_size=16, max_soft_tokens=70, pooling_kernel_size=3),
        video_processor=Gemma4VideoProcessor(patch_size=16, max_soft_tokens=70, pooling_kernel_size=3, num_frames=8),
        tokenizer=tokenizer,
        image_seq_length=70,
    )


FAMILIES["gemma4"] = Family(
    "gemma4",
    "gemma4",
    "Gemma4ForConditionalGeneration",
    _gemma4_config,
    _gemma4_processor,
    special_tokens=GEMMA4_TOKENS,
    named_tokens={
        "image_token": "<|image|>",
        "boi_token": "<|image>",
        "eoi_token": "<image|>",
        "audio_token": "<|audio|>",
        "boa_token": "<|audio>",
        "eoa_token": "<audio|>",
    },
    eos_token="<turn|>",
    pad_token="<pad>",
)


VLLM_SIZED_FAMILIES = (*QWEN2_FAMILIES, "qwen3_vl")
VLLM_HEAD_DIM = 64  # the smallest head vLLM's CPU attention runs


def _vllm_sized(config: Any) -> None:
    r"""A 128-d LLM with 2 heads of 64 (and the vision merger feeding it 128-d), for vLLM's CPU attention."""
    hidden_size = 2 * VLLM_HEAD_DIM
    text_config = config.text_config
    text_config.hidden_size, text_config.intermediate_size = hidden_size, 2 * hidden_size
    text_config.num_attention_heads, text_config.num_key_value_heads = 2, 2
    text_config.head_dim = VLLM_HEAD_DIM
    text_config.rope_parameters = {**text_config.rope_parameters, "mrope_section": [8, 12, 12]}  # sums to 64 / 2
    config.vision_config.out_hidden_size = hidden_size


def build_tiny_family(
    out_dir: str, family: str, seed: int = 0, spare_rows: bool = True, vllm_sized: bool = False
) -> str:
    r"""Write a tiny random model of ``family`` (a key of ``FAMILIES``) to ``out_dir`` and return it.

    ``spare_rows=False``: the embedding has exactly one row per token, so ``<ACTION>`` forces a resize.
    ``vllm_sized``: attention heads of 64, the smallest vLLM's CPU attention runs (the families of
    ``VLLM_SIZED_FAMILIES``).
    """
    import transformers

    if vllm_sized and family not in VLLM_SIZED_FAMILIES:
        raise ValueError(f"vllm_sized is built for {VLLM_SIZED_FAMILIES}, not {family!r}.")

    if family in QWEN2_FAMILIES:
        vocab_size = None if spare_rows else len(train_tokenizer(out_dir))
        size = {"hidden_size": 2 * VLLM_HEAD_DIM, "num_heads": 2} if vllm_sized else {}
        return build_tiny_qwen2vl(out_dir, seed=seed, model_type=family, vocab_size=vocab_size, **size)

    spec = FAMILIES[family]
    os.makedirs(out_dir, exist_ok=True)
    tokenizer = train_tokenizer(
        out_dir, spec.special_tokens, spec.named_tokens, eos_token=spec.eos_token, pad_token=spec.pad_token
    )
    config = spec.make_config(tokenizer, _vocab_rows(len(tokenizer)) if spare_rows else len(tokenizer))
    if vllm_sized:
        _vllm_sized(config)
    torch.manual_seed(seed)
    model = getattr(transformers, spec.model_class)(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False
    )
    model.save_pretrained(out_dir)
    if "spk_dict.pt" in spec.extra_files:  # Qwen2.5-Omni's from_pretrained reads the talker's speakers
        torch.save({}, os.path.join(out_dir, "spk_dict.pt"))

    spec.make_processor(tokenizer).save_pretrained(out_dir)  # also re-saves the tokenizer files
    _fix_tokenizer_config(out_dir)
    return out_dir
