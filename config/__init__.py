"""Configuration: settings from the environment (prefix ``CODEINDEX_``) and the Celery setup."""

from config.settings import Settings, configure, get_settings

__all__ = ["Settings", "configure", "get_settings"]
