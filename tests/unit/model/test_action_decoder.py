import json
import os

import pytest
import torch
from safetensors.torch import load_file

from ivcp.model.action_decoder import HEAD_CONFIG_NAME, HEAD_WEIGHTS_NAME, ActionDecoder


@pytest.mark.parametrize("decoder_type", ["linear", "mlp"])
def test_save_load_round_trip(tmp_path, decoder_type):
    torch.manual_seed(0)
    decoder = ActionDecoder(hidden_size=16, num_classes=5, decoder_type=decoder_type, decoder_hidden_size=8)
    embedding = torch.randn(16)
    decoder.save_pretrained(str(tmp_path), action_embedding=embedding, extra_config={"label_names": ["a"] * 5})

    loaded = ActionDecoder(hidden_size=16, num_classes=5, decoder_type=decoder_type, decoder_hidden_size=8)
    restored_embedding = loaded.load_pretrained(str(tmp_path))
    hidden = torch.randn(3, 16)
    assert torch.equal(loaded(hidden), decoder(hidden))
    assert torch.equal(restored_embedding, embedding)
    config = json.loads((tmp_path / HEAD_CONFIG_NAME).read_text())
    assert config["num_classes"] == 5 and config["decoder_type"] == decoder_type and config["hidden_size"] == 16
    assert not [name for name in os.listdir(tmp_path) if ".tmp." in name]  # atomic writes leave no temp files


def test_mlp_is_two_layers_with_gelu():
    decoder = ActionDecoder(hidden_size=16, num_classes=5, decoder_type="mlp")
    layers = list(decoder.net)
    assert isinstance(layers[0], torch.nn.Linear) and layers[0].out_features == 16  # hidden size defaults to input
    assert isinstance(layers[1], torch.nn.GELU)
    assert isinstance(layers[2], torch.nn.Linear) and layers[2].out_features == 5


def test_head_loads_without_llamafactory(tmp_path):
    ActionDecoder(hidden_size=8, num_classes=3).save_pretrained(str(tmp_path), action_embedding=torch.zeros(8))
    tensors = load_file(str(tmp_path / HEAD_WEIGHTS_NAME))
    assert set(tensors) == {"net.weight", "net.bias", "action_embedding"}
    assert tensors["net.weight"].shape == (3, 8)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"hidden_size": 8, "num_classes": 4}, "num_action_classes"),
        ({"hidden_size": 12, "num_classes": 3}, "hidden size 12"),
        ({"hidden_size": 8, "num_classes": 3, "decoder_type": "mlp"}, "action_decoder_type"),
    ],
)
def test_mismatched_head_is_rejected(tmp_path, kwargs, message):
    ActionDecoder(hidden_size=8, num_classes=3).save_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match=message) as err:
        ActionDecoder(**kwargs).load_pretrained(str(tmp_path))

    assert HEAD_WEIGHTS_NAME in str(err.value)


def test_corrupt_head_is_rejected(tmp_path):
    (tmp_path / HEAD_WEIGHTS_NAME).write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="corrupt"):
        ActionDecoder(hidden_size=8, num_classes=3).load_pretrained(str(tmp_path))


def test_unknown_decoder_type():
    with pytest.raises(ValueError, match="linear"):
        ActionDecoder(hidden_size=8, num_classes=3, decoder_type="transformer")
