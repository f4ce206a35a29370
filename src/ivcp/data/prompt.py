"""The user turn a classifier reads, built from a plain question: one rule for the API server and ``ivcp classify``."""

from ..constants import DEFAULT_PROMPT
from ..model.action_decoder import ACTION_TOKEN


def wrap_question(text: str) -> str:
    r"""``<video>{text}<ACTION>`` (the layout the stage trains on), or the default prompt when ``text`` is empty.

    The caller refuses text holding placeholders first (the API server: every reserved token of the template).
    """
    text = text.strip()
    return f"<video>{text}{ACTION_TOKEN}" if text else DEFAULT_PROMPT


def user_prompt(text: str | None) -> str:
    r"""A local user's ``--prompt``: a plain question is wrapped, a whole user turn is taken as it is.

    A whole user turn is what a dataset writes (one ``<video>``, ``<ACTION>`` after it); anything between raises
    ValueError naming both forms, rather than failing every video alike.
    """
    text = (text or "").strip()
    if not any(token in text for token in ("<video>", "<image>", "<audio>", ACTION_TOKEN)):
        return wrap_question(text)

    if (
        text.count("<video>") == 1
        and "<image>" not in text
        and "<audio>" not in text
        and text.rfind(ACTION_TOKEN) > text.index("<video>")
    ):
        return text

    raise ValueError(
        f"the prompt {text!r} is neither a plain question (<video> and {ACTION_TOKEN} are added to it) nor a "
        f"whole user turn with one <video> and {ACTION_TOKEN} after it, e.g. {DEFAULT_PROMPT!r}."
    )
