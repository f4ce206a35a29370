"""Activated by ``ivcp.pth`` at interpreter start-up: registers the ``action_cls`` stage lazily.

It must stay cheap and harmless: it never imports torch or LLaMA-Factory, never raises, and does nothing
when ``IVCP_DISABLE=1``. It puts a finder first on ``sys.meta_path`` that
- runs ``ivcp.register()`` right after ``llamafactory.train.tuner`` (``train``, ``export``) or
  ``llamafactory.api.app`` (``api``) has been executed (this happens in every process, including the children that
  ``llamafactory-cli`` starts under torchrun),
- runs ``ivcp.register_webui()`` right after ``llamafactory.webui.interface`` (``llamafactory-cli webui``), and
- resolves the documented aliases ``llamafactory.model.action_decoder`` & co. to IVCP's modules.
"""

import importlib
import importlib.abc
import importlib.util
import os
import sys

from .constants import MODULE_ALIASES


DISABLE_ENV = "IVCP_DISABLE"
TRIGGER_MODULES = {  # module -> the ivcp function to run once it has executed
    "llamafactory.train.tuner": "register",  # `train`, `export`
    "llamafactory.api.app": "register",  # `api`
    "llamafactory.webui.interface": "register_webui",  # `webui`
}


def is_disabled() -> bool:
    return os.getenv(DISABLE_ENV, "0").lower() in ("1", "true", "yes", "y")


class _AliasLoader(importlib.abc.Loader):
    """Makes ``import alias`` return the already importable target module."""

    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec):
        return importlib.import_module(self.target)

    def exec_module(self, module) -> None:
        pass


class _RegisterAfterExecLoader(importlib.abc.Loader):
    """Wraps the real loader of a trigger module and calls its ``ivcp`` registration once it has run."""

    def __init__(self, loader: importlib.abc.Loader, register_name: str) -> None:
        self.loader = loader
        self.register_name = register_name

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        _register_quietly(self.register_name)

    def __getattr__(self, name: str):
        return getattr(self.loader, name)


class IvcpFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname in MODULE_ALIASES:
            return importlib.util.spec_from_loader(fullname, _AliasLoader(MODULE_ALIASES[fullname]))

        if fullname not in TRIGGER_MODULES:
            return None

        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue

            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _RegisterAfterExecLoader(spec.loader, TRIGGER_MODULES[fullname])
                return spec

        return None


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (idempotent); register at once if the trigger already ran."""
    if is_disabled() or any(isinstance(finder, IvcpFinder) for finder in sys.meta_path):
        return

    sys.meta_path.insert(0, IvcpFinder())
    for module, register_name in TRIGGER_MODULES.items():
        if module in sys.modules:
            _register_quietly(register_name)


def _register_quietly(register_name: str = "register") -> None:
    r"""A failed registration must not break LLaMA-Factory's other stages: report it and stand down."""
    try:
        import ivcp

        getattr(ivcp, register_name)()
    except Exception as err:  # noqa: BLE001
        sys.stderr.write(f"[ivcp] stage action_cls NOT registered: {err}\n")


try:
    install()
except Exception as err:  # noqa: BLE001  (never break the interpreter start-up)
    sys.stderr.write(f"[ivcp] auto-registration disabled: {err!r}\n")
