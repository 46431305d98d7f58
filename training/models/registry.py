"""Name -> builder registries for generators and discriminators.

One file per architecture registers its builder under a name; the config picks it by that name
(``generator.name``, ``discriminator.name``), so adding an architecture never touches the trainer.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict

from w2sr.core.errors import UserError

logger = logging.getLogger(__name__)

Builder = Callable[[Any], Any]


class Registry:
    """A named table of model builders (``cfg -> keras.Model``)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._builders: Dict[str, Builder] = {}

    def register(self, name: str) -> Callable[[Builder], Builder]:
        """Decorator: ``@GENERATORS.register("rrdbnet")`` above a ``build(cfg)`` function."""
        key = name.lower()

        def decorator(fn: Builder) -> Builder:
            if key in self._builders and self._builders[key] is not fn:
                raise ValueError(f"{self.kind} '{key}' is registered twice "
                                 f"({self._builders[key].__module__} and {fn.__module__})")
            self._builders[key] = fn
            return fn

        return decorator

    def names(self) -> list[str]:
        return sorted(self._builders)

    def get(self, name: str) -> Builder:
        """The builder for ``name``; a UserError listing the known names otherwise."""
        try:
            return self._builders[str(name).lower()]
        except KeyError:
            raise UserError(
                f"unknown {self.kind} '{name}' in the config; known {self.kind}s: "
                f"{', '.join(self.names()) or '(none registered)'}"
            ) from None

    def __contains__(self, name: str) -> bool:
        return str(name).lower() in self._builders


GENERATORS = Registry("generator")
DISCRIMINATORS = Registry("discriminator")


def register_generator(name: str) -> Callable[[Builder], Builder]:
    return GENERATORS.register(name)


def register_discriminator(name: str) -> Callable[[Builder], Builder]:
    return DISCRIMINATORS.register(name)
