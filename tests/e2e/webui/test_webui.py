"""LLaMA Board with action_cls: the real ``llamafactory-cli webui`` driven by a headless Chromium (Playwright)."""

import contextlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import yaml

import ivcp
from ivcp import integration, stage_patches
from ivcp.data.video_reader import plan_video
from ivcp.demo.motion_videos import DIRECTIONS
from ivcp.inference import ActionClassifier
from ivcp.model.head_config import load_head_config
from tests.helpers import free_port, read_json, start_command, wait_for_http


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
RUN_ARGS = {  # a 2-step run on the tiny model, through the Train tab's "Extra arguments"
    "optim": "adamw_torch",
    "max_steps": 2,
    "gradient_accumulation_steps": 1,
    "preprocessing_num_workers": 1,
    "video_fps": 8,
    "bf16": False,
    "seed": 42,
}
TRAIN_TIMEOUT_MS = 600_000


def _field(page, label: str):
    r"""The visible text input of the component labelled ``label`` (Gradio wraps its input in the label)."""
    selector = f'label:has(> span[data-testid="block-info"]:text-is("{label}"))'
    return page.locator(selector).locator("textarea, input").filter(visible=True)


def _choose(page, field, option: str) -> None:
    field.click()
    page.get_by_role("option", name=option, exact=True).click()


def _listbox(page, label: str):
    return page.get_by_role("listbox", name=label, exact=True).filter(visible=True)


def _drive_board(
    page, url: str, work_dir: Path, tiny_model: str, motion_data: str, shots: Path, expect, two_actions: str
) -> None:
    r"""What a user does in LLaMA Board: train, evaluate and try an action classifier; screenshots in ``shots``.

    The try-it panel classifies a test clip, then draws the timeline of ``two_actions`` (two motions in a row).
    """
    names_file = work_dir / "directions.json"
    names_file.write_text(json.dumps(list(DIRECTIONS)))
    page.set_default_timeout(60_000)
    page.goto(url)

    # top bar: a Qwen2-VL model name (template qwen2_vl), the tiny model's folder as its path
    _choose(page, _listbox(page, "Model name"), "Qwen2-VL-2B-Instruct")
    expect(_field(page, "Model path")).not_to_have_value("")
    _field(page, "Model path").fill(tiny_model)
    expect(_listbox(page, "Chat template")).to_have_value("qwen2_vl")

    # Train tab: the stage shows its options; the dataset list offers the datasets with action labels
    expect(page.get_by_label("Number of classes")).to_be_hidden()
    _choose(page, _listbox(page, "Stage"), "Action Classification")
    expect(page.get_by_text("hidden state: linear, or mlp (two layers).")).to_be_visible()  # help text whole
    page.get_by_label("Number of classes").fill("4")
    _field(page, "Label names file").fill(str(names_file))
    _field(page, "Data dir").fill(motion_data)
    _field(page, "Dataset").click()
    # the list fills when the server answers the Data dir change: wait for it (read at once, it was once empty in a run)
    expect(page.get_by_role("option")).to_have_text(
        ["motion_train", "motion_test"], use_inner_text=True, timeout=60_000
    )
    page.get_by_role("option", name="motion_train", exact=True).click()
    page.get_by_text("Extra configurations", exact=True).click()
    _field(page, "Extra arguments").fill(json.dumps(RUN_ARGS))

    page.get_by_role("button", name="Preview command").filter(visible=True).click()
    command = page.locator("code").filter(has_text="llamafactory-cli train").filter(visible=True)
    expect(command).to_contain_text("--stage action_cls")
    for expected in (
        "--num_action_classes 4",
        "--action_decoder_type linear",
        "--action_token_lr_scale 0.1",
        f"--action_label_names {names_file}",
        "--dataset motion_train",
    ):
        expect(command).to_contain_text(expected)
    assert "--action_decoder_hidden_size" not in command.inner_text()  # empty = the default, not 0
    page.evaluate("window.scrollTo(0, 0)")
    bottom = page.get_by_label("Number of classes").bounding_box()["y"] + 120
    clip = {"x": 0, "y": 0, "width": 1400, "height": bottom}
    page.screenshot(path=str(shots / "webui_train_tab.png"), clip=clip, full_page=True)

    # "Save arguments" / "Load arguments" round-trip the action_cls options
    config_name = _listbox(page, "Config path").input_value()
    page.get_by_role("button", name="Save arguments").click()
    expect(page.get_by_text("Arguments have been saved at:").filter(visible=True).first).to_be_visible()
    saved = yaml.safe_load((work_dir / "llamaboard_config" / config_name).read_text())
    assert saved["train.num_action_classes"] == 4 and saved["train.action_label_names"] == str(names_file)
    page.get_by_label("Number of classes").fill("7")
    page.get_by_role("button", name="Load arguments").click()
    expect(page.get_by_label("Number of classes")).to_have_value("4")

    # Start: the UI follows the subprocess to the end
    output_dir = _listbox(page, "Output dir").input_value()
    page.get_by_role("button", name="Start", exact=True).filter(visible=True).click()
    expect(page.get_by_text("Finished.", exact=True).filter(visible=True).first).to_be_visible(
        timeout=TRAIN_TIMEOUT_MS
    )
    run_dir = work_dir / "saves" / "Qwen2-VL-2B-Instruct" / "lora" / output_dir
    assert read_json(run_dir / "action_decoder_config.json")["label_names"] == list(DIRECTIONS)
    assert read_json(run_dir / "trainer_state.json")["global_step"] == 2

    # Evaluate & Predict with the trained adapter chosen in the top bar
    _choose(page, _field(page, "Checkpoint path"), output_dir)
    page.get_by_role("tab", name="Evaluate & Predict").click()
    _field(page, "Data dir").fill(motion_data)
    _choose(page, _field(page, "Dataset"), "motion_test")
    page.get_by_role("button", name="Preview command").filter(visible=True).click()
    eval_command = page.locator("code").filter(has_text="llamafactory-cli train").filter(visible=True)
    expect(eval_command).to_contain_text("--stage action_cls")
    expect(eval_command).to_contain_text("--do_predict True")
    assert "predict_with_generate" not in eval_command.inner_text()

    eval_dir_name = _field(page, "Output dir").input_value()
    page.get_by_role("button", name="Start", exact=True).filter(visible=True).click()
    accuracy_row = page.get_by_role("row").filter(has_text="predict_accuracy").filter(visible=True)
    expect(accuracy_row).to_be_visible(timeout=TRAIN_TIMEOUT_MS)
    shown_accuracy = float(re.search(r"predict_accuracy\s+([0-9.]+)", accuracy_row.inner_text()).group(1))
    eval_dir = work_dir / "saves" / "Qwen2-VL-2B-Instruct" / "lora" / eval_dir_name
    results = read_json(eval_dir / "all_results.json")
    assert shown_accuracy == pytest.approx(results["predict_accuracy"], abs=5e-5)
    expect(page.get_by_role("row").filter(has_text="predict_macro_f1").filter(visible=True)).to_be_visible()
    expect(page.get_by_role("row").filter(has_text="predict_top3_accuracy").filter(visible=True)).to_be_visible()
    matrix_label = page.locator("label[data-testid=block-label]", has_text="Confusion matrix")
    matrix_image = page.locator("div.block").filter(has=matrix_label).locator("img")
    matrix_image.scroll_into_view_if_needed()  # Gradio loads it lazily
    expect(matrix_image).to_be_visible()

    # try it: a test clip gets the class the predict run gave it
    first = json.loads((eval_dir / "predictions.jsonl").read_text().splitlines()[0])
    _field(page, "Video path").fill(str(Path(motion_data) / first["videos"][0]))
    page.get_by_role("button", name="Classify").click()
    top_class = page.get_by_text(re.compile(r"^Top class: ")).filter(visible=True)
    expect(top_class).to_be_visible(timeout=TRAIN_TIMEOUT_MS)
    assert top_class.inner_text().split(": ", 1)[1].split(" (")[0] == first["name"]
    # the sampled frames: the training reader's choice at the head's saved settings, each captioned
    clip = str(Path(motion_data) / first["videos"][0])
    preprocessing = load_head_config(str(run_dir))["preprocessing"]
    plan = plan_video(clip, preprocessing["video_fps"], preprocessing["video_maxlen"])
    for index, seconds in zip(plan.sample_indices, plan.timestamps):
        expect(page.get_by_text(f"#{index} {seconds:.2f} s", exact=True).first).to_be_attached()

    # a timeline: the chart of class probability over time appears, with the classifier's own segments listed
    chart_label = page.locator("label[data-testid=block-label]", has_text="Class probability over time")
    expect(chart_label).to_be_hidden()
    _field(page, "Video path").fill(two_actions)
    page.get_by_label("Window (s)").fill("1")
    page.get_by_label("Stride (s)").fill("0.5")
    page.get_by_role("button", name="Classify").click()
    expect(chart_label).to_be_visible(timeout=TRAIN_TIMEOUT_MS)
    expect(page.locator("div.block").filter(has=chart_label).last.locator("img")).to_be_visible()  # innermost
    expected = ActionClassifier.from_pretrained(tiny_model, adapter=str(run_dir)).timeline(two_actions, 1.0, 0.5)
    segments = expected["timeline"]["segments"]
    shown = page.get_by_role("row").filter(has_text=re.compile(r"\d s – \d")).filter(visible=True)
    expect(shown).to_have_count(len(segments))
    for row, segment in zip(shown.all(), segments):
        cells = [cell.strip() for cell in row.inner_text().split("\t")]
        time_span = f"{segment['start']:.2f} s – {segment['end']:.2f} s"
        assert cells == [time_span, segment["label"], f"{segment['score']:.2%}"], cells
    page.get_by_text("Try the action classifier", exact=True).scroll_into_view_if_needed()
    page.get_by_text("Try the action classifier", exact=True).locator(
        "xpath=ancestor::div[contains(@class,'block')][1]"
    ).screenshot(path=str(shots / "webui_try_it.png"))


@pytest.fixture
def webui(tmp_path):
    r"""``llamafactory-cli webui`` on a loopback port, run in ``tmp_path`` (its saves/ and caches land there)."""
    port = free_port()
    log_path = tmp_path / "webui.log"
    process = start_command(
        tmp_path,
        "llamafactory-cli",
        "webui",
        log_path=log_path,
        GRADIO_SERVER_NAME="127.0.0.1",
        GRADIO_SERVER_PORT=str(port),
        GRADIO_ANALYTICS_ENABLED="False",
        BROWSER="true",  # launch(inbrowser=True) must not open a browser of its own
        OMP_NUM_THREADS="1",
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for_http(url, process, log_path, timeout=300)
        yield url, tmp_path
    finally:
        with contextlib.suppress(ProcessLookupError):  # a webui that died at start-up is reported, not masked
            os.killpg(process.pid, 15)
        process.wait(timeout=60)


def test_webui_trains_evaluates_and_tries_an_action_classifier(webui, tiny_model, motion_data, long_clips):
    playwright = pytest.importorskip("playwright.sync_api")
    if not os.path.isfile(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")

    url, work_dir = webui
    shots = work_dir / "screenshots"
    shots.mkdir()
    print(f"screenshots: {shots}")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            _drive_board(
                browser.new_page(viewport={"width": 1400, "height": 1000}),
                url,
                work_dir,
                tiny_model,
                motion_data,
                shots,
                playwright.expect,
                long_clips[0][2],
            )
        finally:
            browser.close()

    docs_dir = os.getenv("IVCP_WEBUI_SCREENSHOTS_TO")  # to refresh the READMEs' pictures: set it to docs/
    if docs_dir:
        for shot in shots.iterdir():
            shutil.copy(shot, docs_dir)


def test_webui_lists_the_datasets_with_action_labels(tmp_path):
    from ivcp.webui.control import list_action_datasets

    example = {"conversations": [{"from": "human", "value": "<video>Which?<ACTION>"}], "videos": ["a.mp4"]}
    (tmp_path / "labelled.json").write_text(json.dumps([{**example, "action_label": 0}]))
    (tmp_path / "labelled_lines.jsonl").write_text(json.dumps({**example, "action_label": "walk"}) + "\n")
    (tmp_path / "plain.json").write_text(json.dumps([example]))
    info = {
        "labelled": {"file_name": "labelled.json"},
        "labelled_lines": {"file_name": "labelled_lines.jsonl"},
        "renamed_column": {"file_name": "plain.json", "columns": {"action_label": "class_id"}},
        "names_on_the_hub": {"hf_hub_url": "someone/clips", "label_names": ["walk", "run"]},
        "plain_sft": {"file_name": "plain.json"},
        "missing_file": {"file_name": "nowhere.json"},
    }
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    assert list_action_datasets(str(tmp_path)) == ["labelled", "labelled_lines", "renamed_column", "names_on_the_hub"]


def test_register_webui_is_idempotent_and_self_checked(monkeypatch):
    from llamafactory.extras.constants import TRAINING_STAGES
    from llamafactory.webui import interface, runner

    ivcp.register_webui()
    ivcp.register_webui()
    assert list(TRAINING_STAGES.values()).count("action_cls") == 1
    for patched in (interface.create_train_tab, interface.create_eval_tab, runner.Runner._parse_eval_args):
        assert not hasattr(getattr(patched, stage_patches.PATCHED_MARK), stage_patches.PATCHED_MARK)  # wrapped once

    monkeypatch.setitem(integration.WEBUI_REQUIRED_NAMES, "llamafactory.webui.runner", ["Runner.no_such_method"])
    with pytest.raises(RuntimeError, match=r"llamafactory\.webui\.runner\.Runner\.no_such_method"):
        stage_patches.self_check(integration.WEBUI_REQUIRED_NAMES)


def test_the_self_check_covers_the_layout_edit(monkeypatch):
    from types import SimpleNamespace

    from ivcp.webui import components

    components.check_layout_api()  # the installed Gradio holds what ActionTrainBox.attach edits
    monkeypatch.setattr(components, "Context", SimpleNamespace(block=None))  # as if Gradio dropped Context.block
    with pytest.raises(RuntimeError, match=r"`Context.block` and a container's `children` list"):
        components.check_layout_api()
