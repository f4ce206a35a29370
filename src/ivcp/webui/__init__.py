"""LLaMA Board (``llamafactory-cli webui``) support for ``stage: action_cls``.

The patches that hook these modules into LLaMA-Factory's web UI live in :func:`ivcp.integration.register_webui`.
"""
