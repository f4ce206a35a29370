"""IVCP's loggers print where LLaMA-Factory's do, at its verbosity (``LLAMAFACTORY_VERBOSITY``, INFO by default).

LLaMA-Factory configures only its own ``llamafactory`` logger, so ``ivcp.*`` records would fall to Python's
last-resort handler, which shows warnings only. Like LLaMA-Factory's ``get_logger``, :func:`get_logger` configures the
library's root logger once: ``ivcp`` takes LLaMA-Factory's level and hands its records to LLaMA-Factory's handlers
(stdout, and LLaMA Board's running log while the web UI runs a job), without propagating (no line twice).
"""

import logging
import threading

from llamafactory.extras import logging as llamafactory_logging


LIBRARY = "ivcp"
_lock = threading.Lock()


class _LlamaFactoryHandlers(logging.Handler):
    r"""Hands each record to the handlers of LLaMA-Factory's logger."""

    def emit(self, record: logging.LogRecord) -> None:
        llamafactory_logging.get_logger().handle(record)


def _configure_library_root_logger() -> None:
    root = logging.getLogger(LIBRARY)
    with _lock:
        if any(isinstance(handler, _LlamaFactoryHandlers) for handler in root.handlers):
            return

        root.setLevel(llamafactory_logging.get_logger().level)  # get_logger() configures LLaMA-Factory's first
        root.addHandler(_LlamaFactoryHandlers())
        root.propagate = False


def get_logger(name: str) -> logging.Logger:
    r"""The logger ``name`` (an ``ivcp.*`` module), with ``info_rank0`` & co. as LLaMA-Factory's loggers have them."""
    _configure_library_root_logger()
    return logging.getLogger(name)
