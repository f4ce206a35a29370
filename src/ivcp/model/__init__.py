from .action_decoder import ActionDecoder
from .action_model import ActionClassificationModel
from .loader import add_action_token, load_action_model, load_action_tokenizer


__all__ = [
    "ActionClassificationModel",
    "ActionDecoder",
    "add_action_token",
    "load_action_model",
    "load_action_tokenizer",
]
