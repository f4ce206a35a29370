from .finetuning_args import ActionFinetuningArguments


__all__ = ["ActionFinetuningArguments"]
