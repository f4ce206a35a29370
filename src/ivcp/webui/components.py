"""The action_cls widgets of LLaMA Board: the Train tab's options, the Evaluate tab's results and try-it panel."""

from typing import TYPE_CHECKING

import gradio as gr
from gradio.context import Context
from llamafactory.extras.constants import TRAINING_STAGES
from llamafactory.webui.common import get_save_dir
from llamafactory.webui.locales import ALERTS

from ..constants import ACTION_STAGE
from .control import (
    checkpoint_location,
    load_action_results,
    probability_chart,
    result_markdown,
    sampled_frames,
    segments_markdown,
    timeline_chart,
)
from .options import ACTION_OPTIONS, create_option_widget


if TYPE_CHECKING:
    from gradio.components import Component
    from llamafactory.webui.engine import Engine

    from ..inference import ActionClassifier


def check_layout_api() -> None:
    r"""Fail loudly if Gradio's layout no longer works as :meth:`ActionTrainBox.attach` needs (part of the self-check).

    Gradio has no public way to place a block before one already built, so the accordion is moved within its tab's
    ``children`` list: a container's ``children`` must be a list holding the blocks built in it, in order, and
    ``Context.block`` the container being built.
    """
    with gr.Blocks(), gr.Column() as column:
        current = Context.block
        first, second = gr.Markdown(), gr.Markdown()

    children = getattr(column, "children", None)
    if current is not column or not isinstance(children, list) or children[-2:] != [first, second]:
        raise RuntimeError(
            f"IVCP places its Train-tab options through Gradio's `Context.block` and a container's `children` list, "
            f"which gradio {gr.__version__} does not provide as expected: install the gradio version LLaMA-Factory "
            "0.9.5 pins, or set IVCP_DISABLE=1."
        )


class ActionTrainBox:
    r"""The action_cls options, in an accordion of the Train tab shown only while the stage is chosen."""

    def __init__(self) -> None:
        self.tab = Context.block  # the Train tab being built
        with gr.Accordion(open=True, visible=False) as self.accordion, gr.Row():
            self.widgets = {option.name: create_option_widget(option) for option in ACTION_OPTIONS}

    @property
    def inputs(self) -> set["Component"]:
        return set(self.widgets.values())

    def attach(self, elem_dict: dict[str, "Component"]) -> dict[str, "Component"]:
        r"""Place the accordion after the stage's basic settings and show it with the stage; the tab's elements.

        The move edits the tab's ``children`` list (no public Gradio API places a block): ``check_layout_api``
        verifies that at registration.
        """
        self.tab.children.remove(self.accordion)
        self.tab.children.insert(self.tab.children.index(elem_dict["extra_tab"]), self.accordion)
        elem_dict["training_stage"].change(
            lambda stage: gr.Accordion(visible=TRAINING_STAGES.get(stage) == ACTION_STAGE),
            [elem_dict["training_stage"]],
            [self.accordion],
            queue=False,
        )
        return {**elem_dict, "action_tab": self.accordion, **self.widgets}


class TryIt:
    r"""Classify one video with the checkpoint chosen in the top bar (the loaded model is kept for the next video).

    With test clips N > 1 the answer combines N clips; with a window, it is the video's timeline (a chart over time
    and the merged segments) through :meth:`ActionClassifier.timeline`.
    """

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.classifier: ActionClassifier | None = None

    def load(self, model_path: str, adapters: str | None) -> "ActionClassifier":
        from ..inference import ActionClassifier
        from .control import checkpoint_head

        head_directory = checkpoint_head({"model_name_or_path": model_path, "adapter_name_or_path": adapters})
        if head_directory is None:
            raise LookupError

        if self.key != (model_path, adapters):
            self.classifier = None  # free the previous model first
            self.classifier = ActionClassifier.from_pretrained(
                model_path, adapter=adapters, action_decoder_path=head_directory
            )
            self.key = (model_path, adapters)

        return self.classifier

    def classify(
        self,
        lang: str,
        model_name: str,
        model_path: str,
        finetuning_type: str,
        checkpoint_path: str | list[str] | None,
        video: str | None,
        video_path: str,
        top_k: int,
        test_clips: float,
        window: float,
        stride: float,
    ):
        video = video or (video_path or "").strip()
        if not video:
            raise gr.Error(ALERTS["err_action_no_video"][lang])

        try:
            classifier = self.load(*checkpoint_location(model_name, model_path, finetuning_type, checkpoint_path))
        except LookupError:
            raise gr.Error(ALERTS["err_action_no_head"][lang]) from None

        if window and int(test_clips or 1) > 1:
            raise gr.Error(ALERTS["err_action_clips_and_window"][lang])
        try:
            if window:
                result = classifier.timeline(
                    video, window=float(window), stride=float(stride or 0) or None, top_k=int(top_k)
                )
            else:
                result = classifier.predict(video, top_k=int(top_k), test_clips=int(test_clips or 1))
        except ValueError as err:  # a window, stride or clip count that cannot work
            raise gr.Error(str(err)) from None
        if "error" in result:
            raise gr.Error(result["error"])

        classes = result["classes"]  # the top-k, or every class at or above a multi-label head's threshold
        markdown = result_markdown(classes, ALERTS["info_action_top_class"][lang])
        timeline = gr.Plot(visible=False)
        if "timeline" in result:
            markdown += "\n\n" + segments_markdown(
                result["timeline"]["segments"], ALERTS["info_action_segments"][lang]
            )
            timeline = gr.Plot(timeline_chart(result), visible=True)
        frames = sampled_frames(video, *classifier.video_settings)
        return probability_chart(classes), markdown, frames, timeline


def create_action_eval_box(engine: "Engine", elem_dict: dict[str, "Component"]) -> dict[str, "Component"]:
    r"""Below the Evaluate tab's output: the results of an action_cls run, then the try-it panel; the new elements.

    The results (accuracy, top-k accuracy, macro-F1, confusion matrix) are read from the run's output folder.
    """
    get = engine.manager.get_elem_by_id
    top = [get("top.lang"), get("top.model_name"), get("top.model_path"), get("top.finetuning_type")]
    top.append(get("top.checkpoint_path"))

    with gr.Row():
        metrics = gr.Markdown(visible=False)
        confusion_matrix = gr.Image(visible=False, interactive=False, type="pil")

    with gr.Accordion(open=True) as try_tab:
        with gr.Row():
            video = gr.Video(sources=["upload"], scale=2)
            with gr.Column(scale=1):
                video_path = gr.Textbox()
                top_k = gr.Slider(minimum=1, maximum=20, value=5, step=1)
                with gr.Row():
                    test_clips = gr.Number(value=1, minimum=1, maximum=64, precision=0)
                    window = gr.Number(value=0, minimum=0)
                    stride = gr.Number(value=0, minimum=0)
                classify_btn = gr.Button(variant="primary")

        with gr.Row():
            plot = gr.Plot()
            result = gr.Markdown()

        timeline = gr.Plot(visible=False)
        frames = gr.Gallery(columns=8, height="auto", interactive=False)

    def show_results(model_name: str, finetuning_type: str, output_dir: str):
        found = (
            None
            if engine.runner.running or not model_name
            else load_action_results(get_save_dir(model_name, finetuning_type, output_dir))
        )
        if found is None:
            return gr.Markdown(visible=False), gr.Image(visible=False)

        from PIL import Image

        table, matrix_path = found
        return gr.Markdown(table, visible=True), gr.Image(
            Image.open(matrix_path) if matrix_path else None, visible=matrix_path is not None
        )

    elem_dict["output_box"].change(
        show_results,
        [get("top.model_name"), get("top.finetuning_type"), elem_dict["output_dir"]],
        [metrics, confusion_matrix],
        queue=False,
    )
    classify_btn.click(
        TryIt().classify,
        [*top, video, video_path, top_k, test_clips, window, stride],
        [plot, result, frames, timeline],
    )
    return dict(
        action_eval_metrics=metrics,
        action_confusion_matrix=confusion_matrix,
        action_try_tab=try_tab,
        action_try_video=video,
        action_try_path=video_path,
        action_try_top_k=top_k,
        action_try_test_clips=test_clips,
        action_try_window=window,
        action_try_stride=stride,
        action_try_timeline=timeline,
        action_try_btn=classify_btn,
        action_try_frames=frames,
        action_try_plot=plot,
        action_try_result=result,
    )
