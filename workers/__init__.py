"""The Celery app and the worker runtime (``celery -A workers worker``, ``celery -A workers flower``)."""

from workers.app import app

__all__ = ["app"]
