"""IVCP: a video action classification stage (``stage: action_cls``) for LLaMA-Factory."""

__version__ = "0.1.0"

from .constants import ACTION_STAGE, DEFAULT_PROMPT


__all__ = ["ACTION_STAGE", "DEFAULT_PROMPT", "register", "register_webui"]


def register(force: bool = False) -> None:
    """Hook the ``action_cls`` stage into the imported LLaMA-Factory (idempotent; ``force`` patches again)."""
    from .integration import register as _register

    _register(force)


def register_webui() -> None:
    """Also offer the ``action_cls`` stage in LLaMA Board, ``llamafactory-cli webui`` (idempotent)."""
    from .integration import register_webui as _register_webui

    _register_webui()
