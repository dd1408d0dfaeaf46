"""Workers: each worker process registers and heartbeats, so the service can tell when none is alive."""
