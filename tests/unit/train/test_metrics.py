import numpy as np
import pytest

from ivcp.data.label_names import read_label_names
from ivcp.train.action_cls.metric import classification_metrics


def test_metrics_match_a_hand_computed_case():
    labels = np.array([0, 0, 1, 2])
    logits = np.array(
        [
            [3.0, 1.0, 0.0],  # true 0, predicted 0
            [1.0, 2.0, 0.0],  # true 0, predicted 1, 0 is second
            [0.0, 2.0, 1.0],  # true 1, predicted 1
            [2.0, 0.0, 1.0],  # true 2, predicted 0, 2 is second
        ]
    )
    metrics = classification_metrics(logits, labels, num_classes=3, label_names=["walk", "run", "jump"])
    assert metrics["accuracy"] == pytest.approx(2 / 4)
    # top-2 (k = classes - 1 when there are fewer than 6 classes): every true class is in the top two
    assert metrics["top2_accuracy"] == pytest.approx(1.0)
    # per class: walk P=1/2 R=1/2, run P=1/2 R=1, jump P=0 R=0 -> F1 = 1/2, 2/3, 0
    assert metrics["precision_walk"] == pytest.approx(1 / 2) and metrics["recall_walk"] == pytest.approx(1 / 2)
    assert metrics["precision_run"] == pytest.approx(1 / 2) and metrics["recall_run"] == pytest.approx(1.0)
    assert metrics["precision_jump"] == 0.0 and metrics["recall_jump"] == 0.0
    assert metrics["macro_f1"] == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)


def test_top5_for_many_classes_and_none_for_two():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(50, 10)), rng.integers(0, 10, size=50)
    assert "top5_accuracy" in classification_metrics(logits, labels, num_classes=10)
    assert not any(key.startswith("top") for key in classification_metrics(logits[:, :2], labels % 2, num_classes=2))


@pytest.mark.parametrize(
    "content, suffix",
    [('["a", "b", "c"]', ".json"), ('{"0": "a", "2": "c", "1": "b"}', ".json"), ("a\nb\n\nc\n", ".txt")],
)
def test_label_name_files(tmp_path, content, suffix):
    (tmp_path / f"names{suffix}").write_text(content)
    assert read_label_names(f"names{suffix}", base_dir=str(tmp_path)) == ["a", "b", "c"]


@pytest.mark.parametrize(
    "source, message",
    [(["a", "a"], "must be unique"), ({"0": "a", "2": "b"}, "without gaps"), ("missing.json", "does not exist")],
)
def test_bad_label_names(tmp_path, source, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        read_label_names(source, base_dir=str(tmp_path))
