"""Build a tiny, random-weight Qwen2-VL (or Qwen2.5-VL) that loads offline through the Auto classes.

The model uses the real transformers classes, a byte-level BPE tokenizer trained locally on a small English corpus
(with Qwen2's special tokens), and a real ``Qwen2VLProcessor`` (image and video processors capped at 28*28*64 pixels,
so an 8-frame 64x64 clip becomes 16 ``<|video_pad|>`` tokens). Nothing is fetched from the Hub.
"""

import json
import os
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer


TEXT_HIDDEN_SIZE = 64
MAX_PIXELS = 28 * 28 * 64
MIN_PIXELS = 56 * 56
SPARE_VOCAB_ROWS = 64
BPE_VOCAB_SIZE = 1000

# Qwen2's special tokens, in the order of the real vocabulary (ids follow the trained BPE vocabulary).
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# The chat template of Qwen2-VL-Instruct.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = """
What is the person doing in the video? The person is running. The person is walking.
What is happening in this video? Describe the motion in the video. Which way does the object move?
The square moves to the left. The square moves to the right. The square moves up. The square moves down.
The box is moving left, right, up or down across the frame. It moves steadily from one side to the other.
left right up down leftward rightward upward downward forward backward sideways across along around
running walking jumping sitting standing climbing swimming dancing riding driving throwing catching kicking
waving clapping pushing pulling lifting falling turning rolling sliding flying crawling hopping skipping
stretching bending reaching pointing eating drinking talking laughing smiling reading writing cooking
moving motion movement direction speed fast slow quickly slowly steady steadily still static shift drift
The man runs quickly down the street. The woman walks slowly up the hill. A child jumps over the fence.
A dog is running after a ball. The car drives to the right. The bird flies up into the sky.
The ball rolls down the slope. She turns left at the corner. He turns right at the door.
Answer the question about the video. Answer with one word. The answer is left. The answer is right.
The answer is up. The answer is down. The action is running. The action is walking.
Please watch the clip and tell me what the person is doing. What action do you see in the clip?
You are a helpful assistant. I can help you understand images and videos. Here is a picture.
system user assistant
frame frames clip clips video videos image images picture pictures camera scene background foreground
red green blue yellow white black bright dark colour color noise square box circle object shape pixel
first second third last next previous begin end start stop top bottom center middle edge corner side
one two three four five six seven eight nine ten zero hundred thousand number count time times
the a an of to in on at by for with from into onto over under above below between through during
is are was were be been being has have had do does did will would can could should may might must
he she it they we you I me him her them us my your his its their our this that these those there here
what which who whom whose when where why how yes no not and or but if then so because while until
person people man woman boy girl child children player athlete dancer runner walker rider driver
sport sports game match race track field court ball bike horse street road path hill stairs water
classify classification label labels class classes action actions activity activities recognition
train training test testing evaluate evaluation accuracy loss model models token tokens sequence
Hello! How are you? I am fine, thank you. Let's go. It's a nice day. We're ready. They've left.
0 1 2 3 4 5 6 7 8 9 10 11 12 16 20 32 64 100 128 256 512 1000 2024 2025
"""


def _training_corpus() -> list[str]:
    r"""The built-in corpus, with a few recombinations so that frequent words become single tokens."""
    lines = [line.strip() for line in _CORPUS.strip().splitlines() if line.strip()]
    words = sorted({word.strip(".,?!'") for line in lines for word in line.split()} - {""})
    lines += [" ".join(words[i : i + 8]) for i in range(0, len(words), 8)]
    return lines * 4


def _fix_tokenizer_config(out_dir: str, chat_template: str = CHAT_TEMPLATE) -> None:
    r"""Name the tokenizer class ``Qwen2Tokenizer``, embed the chat template and drop load-time-only keys."""
    config_path = os.path.join(out_dir, "tokenizer_config.json")
    with open(config_path, encoding="utf-8") as f:
        tokenizer_config = json.load(f)

    for key in ("is_local", "local_files_only", "name_or_path"):
        tokenizer_config.pop(key, None)

    tokenizer_config["tokenizer_class"] = "Qwen2Tokenizer"
    tokenizer_config["chat_template"] = chat_template
    with open(config_path, "w", encoding="utf-8") as f:
        json.dump(tokenizer_config, f, indent=2, ensure_ascii=False)


def train_tokenizer(
    out_dir: str,
    special_tokens: tuple[str, ...] = SPECIAL_TOKENS,
    named_tokens: dict[str, str] | None = None,
    eos_token: str = "<|im_end|>",
    pad_token: str = "<|endoftext|>",
    bos_token: str | None = None,
    chat_template: str = CHAT_TEMPLATE,
) -> PreTrainedTokenizerBase:
    r"""Train a byte-level BPE with Qwen2's pre-tokenizer, save it as ``Qwen2Tokenizer``, reload it (AutoTokenizer).

    Every family's tiny model shares this recipe: ``special_tokens`` get fixed ids right after the BPE vocabulary
    (in the order given), and ``named_tokens`` (e.g. ``{"image_token": "<image>"}``) become the tokenizer
    attributes that some processors read (``tokenizer.image_token``, ``tokenizer.image_token_id``).
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE - len(special_tokens),
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(_training_corpus(), trainer=trainer)
    model_state = json.loads(tokenizer.to_str())["model"]
    vocab: dict[str, int] = model_state["vocab"]
    merges = [tuple(merge) if isinstance(merge, list) else tuple(merge.split(" ")) for merge in model_state["merges"]]
    for token in special_tokens:  # fixed ids right after the BPE vocabulary, in the given order
        vocab[token] = len(vocab)

    named_tokens = named_tokens or {}
    qwen_tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=bos_token,
        eos_token=eos_token,
        pad_token=pad_token,
        errors="replace",
        model_max_length=32768,
        additional_special_tokens=[token for token in special_tokens if token != pad_token],
        **({"extra_special_tokens": named_tokens} if named_tokens else {}),
    )
    qwen_tokenizer.add_tokens(list(special_tokens), special_tokens=True)
    qwen_tokenizer.chat_template = chat_template
    qwen_tokenizer.save_pretrained(out_dir)
    _fix_tokenizer_config(out_dir, chat_template)
    reloaded = AutoTokenizer.from_pretrained(out_dir)
    for token in special_tokens:
        if reloaded.encode(token, add_special_tokens=False) != [reloaded.convert_tokens_to_ids(token)]:
            raise RuntimeError(f"The tiny tokenizer splits the special token {token}.")

    for name, token in named_tokens.items():
        if getattr(reloaded, name, None) != token:
            raise RuntimeError(f"The tiny tokenizer lost its named token {name}={token}.")

    return reloaded


def _vocab_rows(num_tokens: int) -> int:
    r"""Embedding rows: at least ``SPARE_VOCAB_ROWS`` more than the tokenizer, rounded up to a multiple of 128."""
    return (num_tokens + SPARE_VOCAB_ROWS + 127) // 128 * 128


def _model_config(
    tokenizer: PreTrainedTokenizerBase,
    model_type: str,
    vocab_size: int | None,
    hidden_size: int,
    num_layers: int,
    vision_hidden_size: int = 32,
    num_heads: int = 4,
    intermediate_size: int | None = None,
) -> Any:
    r"""The tiny config: by default a 64-d, 2-layer LLM; depth-2 vision tower whose merger outputs its hidden size."""
    head_dim = hidden_size // num_heads
    if hidden_size % num_heads != 0 or head_dim % 16 != 0 or num_heads % 2 != 0:
        raise ValueError(
            f"hidden_size {hidden_size} must split into an even number of heads ({num_heads}) of a multiple of 16 "
            "(for mrope)."
        )

    token_ids = {
        "image_token_id": tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        "video_token_id": tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        "vision_start_token_id": tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        "vision_end_token_id": tokenizer.convert_tokens_to_ids("<|vision_end|>"),
    }
    text_config = {
        "vocab_size": vocab_size or _vocab_rows(len(tokenizer)),
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size or 2 * hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": 2,
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "use_sliding_window": False,
        "max_window_layers": num_layers,
        "attention_dropout": 0.0,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 1000000.0,
            "mrope_section": [head_dim // 8, head_dim * 3 // 16, head_dim * 3 // 16],  # sums to head_dim / 2
        },
        "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
        "pad_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "tie_word_embeddings": False,
    }
    if model_type == "qwen2_vl":
        from transformers import Qwen2VLConfig

        vision_config = {
            "depth": 2,
            "embed_dim": vision_hidden_size,
            "hidden_size": hidden_size,  # the merger's output size
            "mlp_ratio": 4,
            "num_heads": 2,
            "in_channels": 3,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        }
        config_class = Qwen2VLConfig
    elif model_type == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig

        vision_config = {
            "depth": 2,
            "hidden_size": vision_hidden_size,
            "intermediate_size": 2 * vision_hidden_size,
            "out_hidden_size": hidden_size,  # the merger's output size
            "num_heads": 2,
            "in_channels": 3,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "tokens_per_second": 2,
            "window_size": 112,
            "fullatt_block_indexes": [1],
        }
        config_class = Qwen2_5_VLConfig
    else:
        raise ValueError(f"Unknown model_type {model_type!r}: use `qwen2_vl` or `qwen2_5_vl`.")

    return config_class(text_config=text_config, vision_config=vision_config, tie_word_embeddings=False, **token_ids)


def _save_processor(out_dir: str, tokenizer: PreTrainedTokenizerBase, model_type: str) -> None:
    r"""Save a real Qwen2-VL (or Qwen2.5-VL) processor with image and video processors capped at MAX_PIXELS."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    size = {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS}
    common = {"patch_size": 14, "temporal_patch_size": 2, "merge_size": 2}
    image_processor = Qwen2VLImageProcessor(size=dict(size), **common)
    video_processor = Qwen2VLVideoProcessor(size=dict(size), **common)
    if model_type == "qwen2_5_vl":
        from transformers import Qwen2_5_VLProcessor as processor_class
    else:
        from transformers import Qwen2VLProcessor as processor_class

    processor = processor_class(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out_dir)  # also re-saves the tokenizer files
    _fix_tokenizer_config(out_dir)


def _drop_sub_config_model_types(out_dir: str) -> None:
    r"""Remove ``model_type`` from the saved sub-configs (older transformers mis-resolved the text config)."""
    config_path = os.path.join(out_dir, "config.json")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)

    for key in ("text_config", "vision_config"):
        if isinstance(config.get(key), dict):
            config[key].pop("model_type", None)

    with open(config_path, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)


def build_tiny_qwen2vl(
    out_dir: str,
    seed: int = 0,
    model_type: str = "qwen2_vl",
    vocab_size: int | None = None,
    hidden_size: int = TEXT_HIDDEN_SIZE,
    num_layers: int = 2,
    vision_hidden_size: int = 32,
    num_heads: int = 4,
    intermediate_size: int | None = None,
) -> str:
    r"""Write a tiny random Qwen2-VL (``model_type="qwen2_5_vl"``: Qwen2.5-VL) to ``out_dir`` and return it.

    The directory holds config, safetensors weights, generation config, tokenizer and processor files, and loads
    offline with ``AutoTokenizer``, ``AutoProcessor`` and ``AutoModelForImageTextToText``. By default the embedding
    has at least 64 rows more than the tokenizer, so added tokens need no resize.

    ``vocab_size`` (embedding and lm_head rows; e.g. Qwen2-VL's real 151936, the tokenizer stays small),
    ``hidden_size`` (a multiple of 64; the MLP is twice as wide) and ``num_layers`` size the LLM for benchmarks:
    the defaults give the small model the tests and the demo use. ``vision_hidden_size`` 64 makes every linear layer
    at least 64 wide, as bitsandbytes' 4-bit CPU inference needs (its quantization block is 64 values).
    ``num_heads`` attention heads (2 key/value heads): vLLM's CPU attention needs head_dim 64, e.g. hidden 128 with 2.
    ``intermediate_size`` widens the LLM's MLP (default twice ``hidden_size``).
    """
    from transformers import GenerationConfig

    if model_type == "qwen2_5_vl":
        from transformers import Qwen2_5_VLForConditionalGeneration as model_class
    elif model_type == "qwen2_vl":
        from transformers import Qwen2VLForConditionalGeneration as model_class
    else:
        raise ValueError(f"Unknown model_type {model_type!r}: use `qwen2_vl` or `qwen2_5_vl`.")

    os.makedirs(out_dir, exist_ok=True)
    tokenizer = train_tokenizer(out_dir)
    config = _model_config(
        tokenizer, model_type, vocab_size, hidden_size, num_layers, vision_hidden_size, num_heads, intermediate_size
    )
    if len(tokenizer) > config.text_config.vocab_size:
        raise RuntimeError(
            f"vocab_size {config.text_config.vocab_size} is smaller than the tokenizer ({len(tokenizer)})."
        )

    torch.manual_seed(seed)
    model = model_class(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=config.text_config.bos_token_id,
        eos_token_id=[config.text_config.eos_token_id, config.text_config.pad_token_id],
        pad_token_id=config.text_config.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(out_dir)
    _drop_sub_config_model_types(out_dir)
    _save_processor(out_dir, tokenizer, model_type)
    return out_dir
