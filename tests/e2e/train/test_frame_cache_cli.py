"""Two epochs of ``llamafactory-cli train`` read the second from the frame cache, with the same loss trace."""

from tests.helpers import base_config, run_cli, trainer_losses


def test_two_epochs_with_the_frame_cache_train_as_without(tiny_model, motion_data, tmp_path):
    recipe = {"max_steps": -1, "num_train_epochs": 2, "save_strategy": "no", "plot_loss": False}
    cache_dir = tmp_path / "frames"
    uncached = base_config(tiny_model, motion_data, str(tmp_path / "off"), action_frame_cache=False, **recipe)
    cached = base_config(
        tiny_model, motion_data, str(tmp_path / "on"), action_frame_cache_dir=str(cache_dir), **recipe
    )
    run_cli(uncached, tmp_path)
    log = run_cli(cached, tmp_path)
    output = log.stdout + log.stderr

    assert "Frame cache after epoch 1: 0 videos read from it, 16 decoded (16 stored" in output
    assert "Frame cache after epoch 2: 16 videos read from it, 16 decoded (16 stored" in output
    assert len(list(cache_dir.glob("*/*.frames"))) == 16
    losses = trainer_losses(tmp_path / "on")
    assert len(losses) == 8 and losses == trainer_losses(tmp_path / "off")
