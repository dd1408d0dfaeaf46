"""The worker deployable: the Celery app, its tasks, and the training engine."""
