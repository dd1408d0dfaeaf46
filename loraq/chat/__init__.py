"""Chat completions: requests the API stores and a worker's chat process answers."""
