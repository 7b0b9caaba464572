"""Celery tasks, one module per family; bodies parse the message, lock, call ``indexing``."""
