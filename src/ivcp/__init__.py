"""IVCP: a video action classification stage (``stage: action_cls``) for LLaMA-Factory."""

__version__ = "0.1.0"

ACTION_STAGE = "action_cls"
DEFAULT_PROMPT = "<video>What is the person doing?<ACTION>"  # <ACTION> after the video: its hidden state sees it all


def register() -> None:
    """Hook the ``action_cls`` stage into the imported LLaMA-Factory (idempotent)."""
    from .integration import register as _register

    _register()


def register_webui() -> None:
    """Also offer the ``action_cls`` stage in LLaMA Board, ``llamafactory-cli webui`` (idempotent)."""
    from .integration import register_webui as _register_webui

    _register_webui()
