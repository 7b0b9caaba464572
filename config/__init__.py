"""Configuration: settings from the environment (prefix ``CODEINDEX_``) and the Celery setup.

The names below load :mod:`config.settings` (pydantic-settings) on first use, so that
:mod:`config.local`, which the thin client imports, does not pay for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from config.settings import Settings, configure, get_settings

__all__ = ["Settings", "configure", "get_settings"]


def __getattr__(name: str) -> object:
    if name in __all__:
        from config import settings  # lazy: the reason of this module's docstring

        return getattr(settings, name)
    raise AttributeError(f"module 'config' has no attribute {name!r}")
