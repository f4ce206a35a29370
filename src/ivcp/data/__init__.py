from .collator import ActionDataCollator
from .context import ActionDataConfig, ActionDataError, loading_action_data
from .loader import get_action_dataset
from .processor import ActionDatasetProcessor


__all__ = [
    "ActionDataCollator",
    "ActionDataConfig",
    "ActionDataError",
    "ActionDatasetProcessor",
    "get_action_dataset",
    "loading_action_data",
]
