"""Labels and help texts of the action_cls widgets, merged into LLaMA Board's ``LOCALES`` / ``ALERTS`` in place.

Help texts are Markdown (``<ACTION>`` in backticks, or the browser takes it for a tag). English and Chinese are
written out; LLaMA Board's other languages (ru, ko, ja) show the English text, because its
``change_lang`` needs an entry for every language it offers.
"""

from typing import Any


BOARD_LANGUAGES = ("en", "ru", "zh", "ko", "ja")

# name -> {"en": {...}, "zh": {...}}: the keyword arguments of the component for that language.
_STRINGS: dict[str, dict[str, dict[str, Any]]] = {
    "action_tab": {
        "en": {"label": "Action classification configurations"},
        "zh": {"label": "动作分类参数设置"},
    },
    "num_action_classes": {
        "en": {"label": "Number of classes", "info": "Number of action classes (labels are 0 .. N-1)."},
        "zh": {"label": "类别数", "info": "动作类别的数量（标签为 0 .. N-1）。"},
    },
    "action_decoder_type": {
        "en": {"label": "Decoder type", "info": "Head on the `<ACTION>` hidden state: linear, or mlp (two layers)."},
        "zh": {"label": "分类头类型", "info": "`<ACTION>` 隐状态上的分类头：linear，或两层的 mlp。"},
    },
    "action_decoder_hidden_size": {
        "en": {"label": "Decoder hidden size", "info": "Hidden size of the mlp head; empty = the model's."},
        "zh": {"label": "分类头隐藏层大小", "info": "mlp 分类头的隐藏层大小；留空则等于模型的隐藏层大小。"},
    },
    "action_decoder_path": {
        "en": {"label": "Head path", "info": "A folder with action_decoder.safetensors to start the head from."},
        "zh": {"label": "分类头路径", "info": "包含 action_decoder.safetensors 的文件夹，用于初始化分类头。"},
    },
    "action_token_lr_scale": {
        "en": {"label": "<ACTION> LR scale", "info": "The `<ACTION>` embedding trains with learning rate × this."},
        "zh": {"label": "<ACTION> 学习率倍数", "info": "`<ACTION>` 词嵌入的学习率 = 学习率 × 该值。"},
    },
    "action_label_names": {
        "en": {"label": "Label names file", "info": "A .json or .txt file of class names (optional)."},
        "zh": {"label": "类别名称文件", "info": "类别名称的 .json 或 .txt 文件（可选）。"},
    },
    # the loss options of other branches: their strings are ready for the one-line additions to ACTION_OPTIONS
    "action_class_weights": {
        "en": {"label": "Class weights", "info": "Per-class loss weights (a list, a file, or balanced)."},
        "zh": {"label": "类别权重", "info": "各类别的损失权重（列表、文件或 balanced）。"},
    },
    "action_loss": {
        "en": {"label": "Loss", "info": "Classification loss: cross-entropy or focal."},
        "zh": {"label": "损失函数", "info": "分类损失：交叉熵或 focal。"},
    },
    "action_focal_gamma": {
        "en": {"label": "Focal gamma", "info": "Focusing parameter of the focal loss."},
        "zh": {"label": "Focal gamma", "info": "focal 损失的聚焦参数。"},
    },
    "action_decoder_dropout": {
        "en": {"label": "Decoder dropout", "info": "Dropout before the head."},
        "zh": {"label": "分类头 dropout", "info": "分类头之前的 dropout 比例。"},
    },
    "action_hidden_layer": {
        "en": {"label": "Hidden layer", "info": "Which backbone layer's hidden state feeds the head (-1 = last)."},
        "zh": {"label": "隐藏层", "info": "分类头读取哪一层的隐状态（-1 为最后一层）。"},
    },
    "action_problem_type": {
        "en": {"label": "Problem type", "info": "Single-label or multi-label classification."},
        "zh": {"label": "任务类型", "info": "单标签或多标签分类。"},
    },
    "action_threshold": {
        "en": {"label": "Threshold", "info": "Probability threshold of a class in multi-label classification."},
        "zh": {"label": "阈值", "info": "多标签分类中判定一个类别的概率阈值。"},
    },
    "action_confusion_matrix": {
        "en": {"label": "Confusion matrix"},
        "zh": {"label": "混淆矩阵"},
    },
    "action_try_tab": {
        "en": {"label": "Try the action classifier"},
        "zh": {"label": "试用动作分类器"},
    },
    "action_try_video": {
        "en": {"label": "Video"},
        "zh": {"label": "视频"},
    },
    "action_try_path": {
        "en": {"label": "Video path", "info": "Or the path of a video on this machine."},
        "zh": {"label": "视频路径", "info": "或本机上视频文件的路径。"},
    },
    "action_try_top_k": {
        "en": {"label": "Top-k", "info": "How many classes to show."},
        "zh": {"label": "Top-k", "info": "显示的类别数。"},
    },
    "action_try_test_clips": {
        "en": {"label": "Test clips", "info": "Cut the video into N clips and average their answers (N passes)."},
        "zh": {"label": "测试片段数", "info": "把视频切成 N 段分别分类再取平均（N 次前向）。"},
    },
    "action_try_window": {
        "en": {"label": "Window (s)", "info": "A timeline: classify windows of this many seconds (0: off)."},
        "zh": {"label": "窗口（秒）", "info": "时间线：按此长度的窗口逐段分类（0 为关闭）。"},
    },
    "action_try_stride": {
        "en": {"label": "Stride (s)", "info": "Seconds between windows (0: the window, side by side)."},
        "zh": {"label": "步长（秒）", "info": "相邻窗口的间隔秒数（0 为等于窗口，首尾相接）。"},
    },
    "action_try_btn": {
        "en": {"value": "Classify"},
        "zh": {"value": "分类"},
    },
    "action_try_plot": {
        "en": {"label": "Class probabilities"},
        "zh": {"label": "类别概率"},
    },
    "action_try_timeline": {
        "en": {"label": "Class probability over time"},
        "zh": {"label": "类别概率随时间变化"},
    },
    "action_try_frames": {
        "en": {"label": "Sampled frames (what the classifier saw)"},
        "zh": {"label": "采样帧（分类器看到的画面）"},
    },
}

_ALERTS = {
    "err_action_no_video": {
        "en": "Upload a video or give its path.",
        "zh": "请上传视频或填写视频路径。",
    },
    "err_action_no_head": {
        "en": "The selected checkpoint holds no action head: choose the output of an action_cls run.",
        "zh": "所选检查点中没有动作分类头：请选择 action_cls 训练的输出。",
    },
    "err_action_clips_and_window": {
        "en": "Set test clips or a window, not both: a timeline classifies each window once.",
        "zh": "测试片段数与窗口只能设置其一：时间线对每个窗口只分类一次。",
    },
    "info_action_top_class": {
        "en": "Top class",
        "zh": "最可能的类别",
    },
    "info_action_segments": {
        "en": "Segments",
        "zh": "片段",
    },
}


def _all_languages(strings: dict[str, Any]) -> dict[str, Any]:
    return {lang: strings.get(lang, strings["en"]) for lang in BOARD_LANGUAGES}


def install_locales(locales: dict[str, Any], alerts: dict[str, Any]) -> None:
    r"""Add the action_cls strings to LLaMA Board's tables (in place: its modules imported them by name)."""
    for name, strings in _STRINGS.items():
        locales.setdefault(name, _all_languages(strings))

    for name, strings in _ALERTS.items():
        alerts.setdefault(name, _all_languages(strings))
