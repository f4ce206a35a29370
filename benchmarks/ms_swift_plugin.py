"""ms-swift ``--external_plugins`` file of benchmarks/vs_ms_swift.py (runs inside ms-swift's venv, not IVCP's).

ms-swift's Qwen2-VL template finds the video placeholder by the released Qwen2-VL token ids (151655/151656); the
benchmark's model has its own small tokenizer, so the ids are set to the tokenizer's (``IVCP_BENCH_MEDIA_IDS``:
"image_id,video_id"); without this, no ``<|video_pad|>`` would be expanded and the model would see no video.
It adds benchmarks/step_profile.py's CPU clock (``IVCP_BENCH_CLOCK``, a JSON path) and, with
``IVCP_BENCH_PROFILE``, also benchmarks/step_profile.py's callback and data-path timers.
"""

import os
import sys

from swift.template.templates.qwen import Qwen2VLTemplate


image_id, video_id = (int(value) for value in os.environ["IVCP_BENCH_MEDIA_IDS"].split(","))
Qwen2VLTemplate.image_token_id = image_id
Qwen2VLTemplate.video_token_id = video_id

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from step_profile import CpuClock, StepProfile, wrap_timed  # noqa: E402
from transformers.trainer_callback import CallbackHandler  # noqa: E402


callbacks = [CpuClock(os.environ["IVCP_BENCH_CLOCK"])]
if os.environ.get("IVCP_BENCH_PROFILE"):
    import qwen_vl_utils
    from swift.template.base import Template
    from transformers import Qwen2VLVideoProcessor

    wrap_timed(qwen_vl_utils, "fetch_video", "decode")
    wrap_timed(Qwen2VLVideoProcessor, "__call__", "processor")
    wrap_timed(Template, "encode", "encode (decode + processor + tokens)")
    wrap_timed(Template, "data_collator", "collate")
    callbacks.append(StepProfile(os.environ["IVCP_BENCH_PROFILE"]))

handler_init = CallbackHandler.__init__


def init_with_callbacks(self, trainer_callbacks, *args, **kwargs) -> None:  # every Trainer builds one handler
    handler_init(self, [*trainer_callbacks, *callbacks], *args, **kwargs)


CallbackHandler.__init__ = init_with_callbacks
