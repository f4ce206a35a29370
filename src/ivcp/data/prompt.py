"""The user turn a classifier reads, built from a plain question: one rule for the API server and ``ivcp classify``."""

from .. import DEFAULT_PROMPT
from ..model.action_decoder import ACTION_TOKEN


SPECIAL_TOKENS = ("<video>", "<image>", "<audio>", ACTION_TOKEN)


def user_prompt(text: str | None, whole_turn_ok: bool = False) -> str:
    r"""``<video>{text}<ACTION>`` (the layout the stage trains on), or the default prompt when ``text`` is empty.

    A question that holds a placeholder raises ValueError: a second ``<video>`` or ``<ACTION>`` would shift what the
    head reads. With ``whole_turn_ok`` (a local user, not a server's client), a whole user turn as a dataset writes it
    (one ``<video>``, ``<ACTION>`` after it) is taken as it is.
    """
    text = (text or "").strip()
    if not any(token in text for token in SPECIAL_TOKENS):
        return f"<video>{text}{ACTION_TOKEN}" if text else DEFAULT_PROMPT

    if whole_turn_ok and _is_whole_turn(text):
        return text

    if whole_turn_ok:
        raise ValueError(
            f"the prompt {text!r} is neither a plain question (<video> and {ACTION_TOKEN} are added to it) nor a "
            f"whole user turn with one <video> and {ACTION_TOKEN} after it, e.g. {DEFAULT_PROMPT!r}."
        )
    raise ValueError(f"the text may not hold {', '.join(SPECIAL_TOKENS)}: they are added to it.")


def _is_whole_turn(text: str) -> bool:
    return (
        text.count("<video>") == 1
        and "<image>" not in text
        and "<audio>" not in text
        and text.rfind(ACTION_TOKEN) > text.index("<video>")
    )
