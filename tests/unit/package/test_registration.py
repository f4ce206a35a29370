import logging
import os
import subprocess
import sys
import sysconfig

import pytest

import ivcp
from ivcp import stage_patches
from ivcp.hparams.flags import flags_to_dotlist
from tests.helpers import REPO


def _python(code: str, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env}, cwd="/", check=True
    )
    return result.stdout.strip()


def test_pth_hook_registers_after_tuner_import():
    code = (
        "import sys, llamafactory.train.tuner as t, llamafactory.hparams.parser as p;"
        "print(hasattr(t._training_function, '__ivcp_original__'), p._TRAIN_ARGS[3].__name__)"
    )
    assert _python(code) == "True ActionFinetuningArguments"


def test_opt_out_leaves_llamafactory_untouched():
    code = (
        "import sys, llamafactory.train.tuner as t, llamafactory.hparams.parser as p;"
        "print(hasattr(t._training_function, '__ivcp_original__'), p._TRAIN_ARGS[3].__name__,"
        " 'ivcp.integration' in sys.modules)"
    )
    assert _python(code, IVCP_DISABLE="1") == "False FinetuningArguments False"


def test_bootstrap_does_not_import_torch():
    assert _python(
        "import sys; print('torch' in sys.modules, any('IvcpFinder' in repr(f) for f in sys.meta_path))"
    ) == ("False True")


def test_documented_aliases_resolve():
    code = (
        "from llamafactory.model.action_decoder import ActionDecoder;"
        "import llamafactory.train.action_cls as a, llamafactory.data.processor.action_cls as d;"
        "print(ActionDecoder.__module__, a.run_action_cls.__module__, d.ActionDatasetProcessor.__module__)"
    )
    assert _python(code) == "ivcp.model.action_decoder ivcp.train.action_cls.workflow ivcp.data.processor"


def test_pth_file_is_installed():
    purelib = sysconfig.get_paths()["purelib"]
    with open(os.path.join(purelib, "ivcp.pth")) as f:
        assert f.read().strip() == "import ivcp._autoload"


def test_register_is_idempotent():
    from llamafactory.hparams import parser
    from llamafactory.train import tuner

    ivcp.register()
    first = tuner._training_function
    ivcp.register(force=True)  # the patching code runs again
    assert tuner._training_function is first
    assert first.__ivcp_original__.__module__ == "llamafactory.train.tuner"
    assert sum(cls.__name__ == "ActionFinetuningArguments" for cls in parser._TRAIN_ARGS) == 1


def test_self_check_names_missing_upstream_names(monkeypatch):
    monkeypatch.setitem(stage_patches.REQUIRED_NAMES, "llamafactory.data.loader", ["no_such_function"])
    with pytest.raises(RuntimeError, match=r"llamafactory==0\.9\.5.*llamafactory\.data\.loader\.no_such_function"):
        stage_patches.self_check()


@pytest.mark.parametrize(
    "flags, dotlist",
    [
        (["--do_train", "false", "--do_eval", "true"], ["do_train=false", "do_eval=true"]),
        (["--adapter_name_or_path=out/x", "--plot_loss"], ["adapter_name_or_path=out/x", "plot_loss=true"]),
        (["do_train=false", "--do_eval", "true"], ["do_train=false", "do_eval=true"]),
    ],
)
def test_flags_to_dotlist(flags, dotlist):
    assert flags_to_dotlist(flags) == dotlist


def test_train_script_moves_yaml_first_and_drops_local_rank(monkeypatch):
    sys.path.insert(0, os.path.join(REPO, "src"))
    try:
        from train import normalize_argv
    finally:
        sys.path.pop(0)

    monkeypatch.setattr(os, "environ", {key: value for key, value in os.environ.items() if key != "LOCAL_RANK"})
    assert normalize_argv(["train.py", "--local_rank=1", "x.yaml", "max_steps=2"]) == [
        "train.py",
        "x.yaml",
        "max_steps=2",
    ]
    assert os.environ["LOCAL_RANK"] == "1"
    assert normalize_argv(["train.py", "--local_rank", "0", "x.yml"]) == ["train.py", "x.yml"]
    flags = ["train.py", "--local_rank=0", "--deepspeed", "ds_z3_config.json", "--stage", "action_cls"]
    assert normalize_argv(flags) == flags  # flags alone: --local_rank is a TrainingArguments field


@pytest.mark.parametrize("under_ray", [False, True])
def test_action_runs_go_through_upstreams_training_function(tiny_model, motion_data, tmp_path, monkeypatch, under_ray):
    r"""Upstream builds the callbacks and keeps its Ray early return and its process-group teardown."""
    from types import SimpleNamespace

    from llamafactory.train import tuner
    from llamafactory.train.callbacks import LogCallback, ReporterCallback

    from ivcp.train import tuner as action_tuner
    from tests.helpers import base_config

    ivcp.register()
    runs, destroyed = [], []
    monkeypatch.setattr(action_tuner, "run_action_cls", lambda *args: runs.append(args))
    monkeypatch.setattr(
        tuner, "dist", SimpleNamespace(is_initialized=lambda: True, destroy_process_group=lambda: destroyed.append(1))
    )
    monkeypatch.setattr(tuner, "is_ray_available", lambda: under_ray)
    monkeypatch.setattr(tuner, "ray", SimpleNamespace(is_initialized=lambda: True), raising=False)
    tuner._training_function({"args": base_config(tiny_model, motion_data, str(tmp_path / "out")), "callbacks": []})

    ((_, _, _, finetuning_args, callbacks),) = runs
    assert finetuning_args.stage == "action_cls"
    assert isinstance(callbacks[0], LogCallback) and isinstance(callbacks[-1], ReporterCallback)
    assert destroyed == ([] if under_ray else [1])
    assert tuner.run_rm.__module__ == "llamafactory.train.rm.workflow"  # swapped for the call only


def test_only_the_missing_optional_kernels_notice_of_bitsandbytes_is_dropped(caplog):
    from ivcp.model.bnb_notice import BNB_CPU_LOGGER, quiet_optional_cpu_kernel_notice

    quiet_optional_cpu_kernel_notice()
    quiet_optional_cpu_kernel_notice()  # idempotent: one filter
    bnb_logger = logging.getLogger(BNB_CPU_LOGGER)
    assert len(bnb_logger.filters) == 1
    notice = "Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you already ..."
    with caplog.at_level(logging.WARNING, logger=BNB_CPU_LOGGER):
        bnb_logger.warning(notice, ModuleNotFoundError("No module named 'kernels'", name="kernels"))
        bnb_logger.warning(notice, RuntimeError("the Hub is down"))  # kernels installed but failing: shown
        bnb_logger.warning("any other warning")
    assert [record.getMessage()[-40:] for record in caplog.records] == [
        (notice % RuntimeError("the Hub is down"))[-40:],
        "any other warning",
    ]


def test_importing_bitsandbytes_in_ivcp_prints_no_notice():
    # what PEFT does in every LoRA run; on a CPU without AVX512-BF16 bitsandbytes has nothing to say either way
    code = "import logging; logging.basicConfig(); {}import bitsandbytes"
    quiet = "from ivcp.model.bnb_notice import quiet_optional_cpu_kernel_notice as q; q(); "
    for setup in ("", quiet):
        result = subprocess.run([sys.executable, "-c", code.format(setup)], capture_output=True, text=True, check=True)
        if not setup and "gemm_4bit_forward" not in result.stderr:
            pytest.skip("bitsandbytes prints no kernel notice on this CPU")
    assert "gemm_4bit_forward" not in result.stderr, result.stderr
