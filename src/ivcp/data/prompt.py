"""The user turn a classifier reads, built from a plain question: one rule for the API server and ``ivcp classify``."""

from .. import DEFAULT_PROMPT
from ..model.action_decoder import ACTION_TOKEN


SPECIAL_TOKENS = ("<video>", "<image>", "<audio>", ACTION_TOKEN)


def user_prompt(text: str | None) -> str:
    r"""``<video>{text}<ACTION>`` (the layout the stage trains on), or the default prompt when ``text`` is empty.

    Raises ValueError when ``text`` already holds a placeholder: the caller's question is plain text, and a second
    ``<video>`` or ``<ACTION>`` would shift what the head reads.
    """
    text = (text or "").strip()
    if any(token in text for token in SPECIAL_TOKENS):
        raise ValueError(f"the prompt may not hold {', '.join(SPECIAL_TOKENS)}: they are added to it.")

    return f"<video>{text}{ACTION_TOKEN}" if text else DEFAULT_PROMPT
