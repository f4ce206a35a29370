"""Entry point for launchers that run a script: ``deepspeed src/train.py ...``, ``accelerate launch src/train.py ...``.

Takes the same arguments as ``llamafactory-cli train``: a YAML path (plus overrides) or command-line flags.
"""

import os
import sys


def normalize_argv(argv: list[str]) -> list[str]:
    r"""Drop the ``--local_rank`` the DeepSpeed launcher puts before the user's arguments when a YAML is given.

    LLaMA-Factory only reads a config file from ``argv[1]``; the rank is in the LOCAL_RANK environment anyway.
    """
    args = list(argv[1:])
    has_config = any(arg.endswith((".yaml", ".yml", ".json")) and not arg.startswith("--") for arg in args)
    if not has_config:
        return argv

    cleaned, i = [], 0
    while i < len(args):
        if args[i].startswith("--local_rank=") or args[i].startswith("--local-rank="):
            os.environ.setdefault("LOCAL_RANK", args[i].split("=", 1)[1])
            i += 1
        elif args[i] in ("--local_rank", "--local-rank") and i + 1 < len(args):
            os.environ.setdefault("LOCAL_RANK", args[i + 1])
            i += 2
        else:
            cleaned.append(args[i])
            i += 1

    config_index = next(i for i, arg in enumerate(cleaned) if arg.endswith((".yaml", ".yml", ".json")))
    return [argv[0], cleaned[config_index]] + cleaned[:config_index] + cleaned[config_index + 1 :]


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
