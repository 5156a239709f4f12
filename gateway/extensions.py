"""The per-app extension objects, looked up in one place: ``app.extensions["gateway"]`` (the worker's
:class:`gateway.core.runtime.Gateway`) and ``app.extensions["variants"]`` (:class:`gateway.variants.runtime.Variants`).

Every layer reaches the current app's objects through these accessors, so no module imports back up the layers
(``gateway/__init__.py`` imports the web layer to build the app; nothing below imports ``gateway`` itself).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from flask import current_app

if TYPE_CHECKING:
    from flask import Flask

    from .core.runtime import Gateway
    from .variants.runtime import Variants

GATEWAY = "gateway"
VARIANTS = "variants"


def gateway_of(app: Flask) -> Gateway:
    """*app*'s gateway runtime (pending table, producer, reply reader): for code that runs outside Flask's
    request context (the lean path, :mod:`gateway.web.lean`)."""
    return app.extensions[GATEWAY]


def current_gateway() -> Gateway:
    """The current app's gateway runtime (pending table, producer, reply reader)."""
    return gateway_of(current_app)


def current_variants() -> Variants:
    """The current app's variants runtime (async results, entity states)."""
    return current_app.extensions[VARIANTS]
