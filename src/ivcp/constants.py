"""Names shared by every layer; a leaf module (it imports nothing), so anything may import it."""

ACTION_STAGE = "action_cls"
DEFAULT_PROMPT = "<video>What is the person doing?<ACTION>"  # <ACTION> after the video: its hidden state sees it all
MODULE_ALIASES = {  # the seed-documented import paths, resolved to IVCP's modules (``ivcp._autoload``, ``register``)
    "llamafactory.model.action_decoder": "ivcp.model.action_decoder",
    "llamafactory.train.action_cls": "ivcp.train.action_cls",
    "llamafactory.data.processor.action_cls": "ivcp.data.processor",
}
