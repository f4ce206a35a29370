"""Entry point for launchers that run a script: ``deepspeed src/train.py ...``, ``accelerate launch src/train.py ...``.

Takes the same arguments as ``llamafactory-cli train``: a YAML path (plus overrides) or command-line flags.
"""

import os
import sys


CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def normalize_argv(argv: list[str]) -> list[str]:
    r"""Drop the ``--local_rank`` the DeepSpeed launcher puts before a YAML path.

    LLaMA-Factory reads a config file only from ``argv[1]``; the rank is in the LOCAL_RANK environment anyway.
    Command-line flags are left alone (``--local_rank`` is a TrainingArguments field there).
    """
    args, rank = list(argv[1:]), None
    if args and args[0].startswith(("--local_rank=", "--local-rank=")):
        rank, args = args[0].split("=", 1)[1], args[1:]
    elif len(args) > 1 and args[0] in ("--local_rank", "--local-rank"):
        rank, args = args[1], args[2:]

    if rank is None or not args or not args[0].endswith(CONFIG_SUFFIXES):
        return argv

    os.environ.setdefault("LOCAL_RANK", rank)
    return [argv[0], *args]


def main() -> None:
    import ivcp

    sys.argv = normalize_argv(sys.argv)
    ivcp.register()
    from llamafactory.train.tuner import run_exp

    run_exp()


def _mp_fn(index: int) -> None:
    # For xla_spawn (TPUs)
    main()


if __name__ == "__main__":
    main()
