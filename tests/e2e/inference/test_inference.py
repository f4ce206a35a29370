"""Serving equals training: the one-call API gives the trainer's own predictions; the seed snippet still works."""

import json

import psutil
import pytest
import torch

from ivcp.batch.inputs import Item
from ivcp.batch.runner import Job, prepared_pieces
from ivcp.constants import DEFAULT_PROMPT
from ivcp.data.context import ActionDataError, media_error
from ivcp.inference import ActionClassifier
from ivcp.model.action_model import last_token_positions
from tests.helpers import run_command, write_broken_videos, write_late_damaged_video


def test_api_predictions_equal_the_trainers(tiny_model, trained):
    output_dir, records = trained
    classifier = ActionClassifier.from_pretrained(tiny_model, adapter=str(output_dir))
    videos = [record["videos"][0] for record in records]
    results = classifier.predict(videos, top_k=4, batch_size=5)  # other batching than the trainer's
    assert len(results) == len(records)
    for result, record in zip(results, records):
        assert result["video"] == record["videos"][0] and result["predicted"] == record["predicted"]
        for ours, theirs in zip(result["classes"], record["classes"]):
            assert ours["class"] == theirs["class"]
            assert ours["probability"] == pytest.approx(theirs["probability"], abs=1e-5)

    single = classifier.predict(videos[0], top_k=2)
    assert single["predicted"] == results[0]["predicted"] and len(single["classes"]) == 2
    assert single["name"] == str(single["predicted"])  # no label names in this run: ids as names


def test_classify_forks_its_decode_workers_before_the_weights_load(tiny_model, trained):
    r"""``ivcp classify``'s order: the reader (no weights), its DataLoader workers forked, then the weights; the
    batches the workers prepared meanwhile give the one-process logits."""
    output_dir, records = trained
    videos = [record["videos"][0] for record in records]
    reader = ActionClassifier.reader(tiny_model, adapter=str(output_dir))
    before = set(psutil.Process().children())
    items = [Item(video, DEFAULT_PROMPT) for video in videos]
    groups = [items[start : start + 3] for start in range(0, len(items), 3)]
    pieces = prepared_pieces(reader, groups, Job(None, batch_size=3, decode_workers=2))
    assert len(set(psutil.Process().children()) - before) == 2 and reader.model is None

    classifier = reader.load_model()
    rows = [row for piece in pieces for row in classifier.classify_prepared(piece.batch, piece.outcomes)]
    torch.testing.assert_close(torch.stack(rows), classifier.predict_logits(videos))


def test_seed_snippet_runs_as_documented(tiny_model, trained):
    output_dir, _ = trained
    from llamafactory.model.action_decoder import ActionDecoder

    head = ActionDecoder(hidden_size=64, num_classes=4, decoder_type="linear")
    action_embedding = head.load_pretrained(str(output_dir))
    assert action_embedding.shape == (64,)

    # the hidden state at the <ACTION> position, taken from the served backbone, through the documented head
    classifier = ActionClassifier.from_pretrained(tiny_model, adapter=str(output_dir))
    video = json.loads((output_dir / "predictions.jsonl").read_text().splitlines()[0])["videos"][0]
    batch = classifier.collator([classifier._encode(video, "<video>What is the person doing?<ACTION>")])
    model = classifier.model
    with torch.no_grad():
        hidden = model.base_model.model(**batch, use_cache=False).last_hidden_state
        position = last_token_positions(batch["input_ids"], model.action_token_id)
        logits = head(hidden[torch.arange(1), position])
    torch.testing.assert_close(logits, classifier.predict_logits([video]))


def test_missing_head_is_explained(tiny_model):
    with pytest.raises(FileNotFoundError, match="No action_decoder_config.json"):
        ActionClassifier.from_pretrained(tiny_model)


def test_classify_command_writes_jsonl(tiny_model, trained, motion_data, tmp_path):
    output_dir, records = trained
    broken = write_broken_videos(motion_data, tmp_path / "broken")
    videos = [record["videos"][0] for record in records[:3]]
    videos.insert(2, str(broken["not-a-video"]))  # one bad file: reported, the others still classified
    (tmp_path / "videos.txt").write_text("\n".join(videos[1:]) + "\n")
    result = run_command(
        tmp_path,
        "ivcp",
        "classify",
        videos[0],
        "--video_list",
        "videos.txt",
        "--model",
        tiny_model,
        "--adapter",
        str(output_dir),
        "--output",
        "out.jsonl",
        "--top_k",
        "3",
        "--batch_size",
        "2",
        check=False,
    )
    assert "Classifying" in result.stderr  # the progress bar
    assert result.returncode == 1 and "3 of 4 videos classified, 1 failed." in result.stderr
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [line["video"] for line in lines] == videos
    assert "not-a-video.mp4" in lines[2]["error"] and lines[2]["error_kind"] == "video unreadable"
    del lines[2]
    assert [line["predicted"] for line in lines] == [record["predicted"] for record in records[:3]]
    assert all(len(line["classes"]) == 3 for line in lines)


def test_export_is_self_contained(tiny_model, trained, tmp_path):
    output_dir, records = trained
    export_dir = tmp_path / "export"
    config = {
        "model_name_or_path": tiny_model,
        "adapter_name_or_path": str(output_dir),  # no `stage` given: the head's config marks an action classifier
        "template": "qwen2_vl",
        "finetuning_type": "lora",
        "export_dir": str(export_dir),
        "infer_dtype": "float32",
    }
    run_command(tmp_path, "llamafactory-cli", "export", *[f"--{key}={value}" for key, value in config.items()])
    head_config = json.loads((export_dir / "action_decoder_config.json").read_text())
    assert head_config["num_classes"] == 4 and head_config["preprocessing"]["video_fps"] == 8
    assert not (export_dir / "adapter_model.safetensors").exists()
    tokenizer_files = (export_dir / "tokenizer.json").read_text()
    assert "<ACTION>" in tokenizer_files

    exported = ActionClassifier.from_pretrained(str(export_dir))  # the folder alone
    with torch.no_grad():
        table_row = exported.model.backbone.get_input_embeddings().weight[exported.model.action_token_id]
    torch.testing.assert_close(table_row, exported.model.action_embedding.detach())  # the learned row is merged in

    videos = [record["videos"][0] for record in records]
    original = ActionClassifier.from_pretrained(tiny_model, adapter=str(output_dir))
    torch.testing.assert_close(exported.predict_logits(videos), original.predict_logits(videos), rtol=1e-4, atol=1e-5)


def test_one_bad_file_costs_only_its_own_result(tiny_model, trained, motion_data, tmp_path):
    output_dir, records = trained
    broken = write_broken_videos(motion_data, tmp_path / "broken")
    good = [record["videos"][0] for record in records[:3]]
    videos = [good[0], *map(str, broken.values()), good[1], str(tmp_path / "missing.mp4"), good[2]]
    classifier = ActionClassifier.from_pretrained(tiny_model, adapter=str(output_dir))
    results = classifier.predict(videos, top_k=2, batch_size=4)  # bad files in both batches
    assert [result["video"] for result in results] == videos
    classified = [result for result in results if "error" not in result]
    for result, expected in zip(classified, classifier.predict(good, top_k=2), strict=True):
        assert result["video"] == expected["video"] and result["predicted"] == expected["predicted"]
        assert result["classes"][0]["probability"] == pytest.approx(expected["classes"][0]["probability"], abs=1e-5)
    failed = {result["video"]: result for result in results if "error" in result}
    assert set(failed) == {*map(str, broken.values()), str(tmp_path / "missing.mp4")}
    for video, result in failed.items():
        assert result["error"].count(video) == 1, result  # the file named once, as given: no "video x has 'x'"
        assert "media_dir" not in result["error"], result  # inference has no such option to change
        assert result["error_kind"] == ("video missing" if "missing" in video else "video unreadable"), result
    assert "no video stream" in failed[str(broken["audio-only"])]["error"]  # a cause, not an empty message
    with pytest.raises(ActionDataError, match="empty.mp4"):
        classifier.predict_logits([good[0], str(broken["empty"])])


def test_a_processing_failure_keeps_its_kind():
    err = media_error(RuntimeError("bad config"), None, "a.mp4")
    assert (
        err.kind == "processing failed"
        and str(err) == "video 'a.mp4' could not be processed: RuntimeError: bad config"
    )
    unreadable = media_error(FileNotFoundError(2, "No such file"), "example 3 of x.json", "a.mp4")
    assert unreadable.kind == "video unreadable" and str(unreadable).startswith("example 3 of x.json: video 'a.mp4' ")


def test_non_finite_logits_are_each_videos_error(tiny_model, trained):
    output_dir, records = trained
    classifier = ActionClassifier.from_pretrained(tiny_model, adapter=str(output_dir))
    with torch.no_grad():  # an fp16 overflow, as a GPU may produce it
        classifier.model.action_decoder.net.bias[0] = float("nan")
    results = classifier.predict([record["videos"][0] for record in records[:2]], top_k=2)
    assert [result["error_kind"] for result in results] == ["non_finite", "non_finite"]
    assert "NaN" in results[0]["error"] and "classes" not in results[0]
    json.dumps(results, allow_nan=False)  # no literal NaN reaches JSON


def test_a_video_that_fails_only_when_decoded_is_its_own_error(tiny_model, trained, tmp_path):
    r"""It plans, so the batch is formed; decoding fails in the collator, and the full check names the file."""
    output_dir, records = trained
    good = records[0]["videos"][0]
    damaged = str(write_late_damaged_video(good, tmp_path / "late.mp4"))
    classifier = ActionClassifier.from_pretrained(tiny_model, adapter=str(output_dir))
    assert isinstance(classifier.encode(damaged), dict)  # planning alone does not see the damage
    results = classifier.predict([good, damaged], top_k=2)
    assert results[0]["predicted"] == records[0]["predicted"]
    assert results[1]["video"] == damaged and damaged in results[1]["error"]
    assert results[1]["error_kind"] == "video unreadable" and "cannot be read by PyAV" in results[1]["error"]
