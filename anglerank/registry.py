"""Named classes of one kind, each in its own file of a package: samplers, scoring estimators.

A class joins with the :meth:`Registry.register` decorator in its module; the package's
modules are imported the first time a name is looked up, so adding one is adding a file.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable

__all__ = ["Registry"]


class Registry:
    def __init__(self, kind: str, package: str):
        self.kind, self.package = kind, package
        self.classes: dict[str, type] = {}

    def register(self, name: str) -> Callable[[type], type]:
        """Class decorator: the class becomes available by ``name`` (its ``name`` attribute is set)."""

        def deco(cls: type) -> type:
            if name in self.classes and self.classes[name] is not cls:
                raise RuntimeError(f"two {self.kind}s registered as {name!r}")
            cls.name = name
            self.classes[name] = cls
            return cls

        return deco

    def load_builtin(self) -> None:
        package = importlib.import_module(self.package)
        for mod in pkgutil.iter_modules(package.__path__):
            if not mod.name.startswith("_"):  # private modules hold no entries (the rewards' sandbox scripts)
                importlib.import_module(f"{self.package}.{mod.name}")

    def names(self) -> list[str]:
        self.load_builtin()
        return sorted(self.classes)

    def get(self, name: str) -> type:
        """The class registered as ``name`` (KeyError if none)."""
        self.load_builtin()
        return self.classes[name]
