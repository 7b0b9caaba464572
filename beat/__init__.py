"""The beat schedule of the fleet and its single-instance guard (celery-redbeat's lock)."""
