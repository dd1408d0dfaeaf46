"""loraq's domain: shared by the API and the worker, importing neither."""
