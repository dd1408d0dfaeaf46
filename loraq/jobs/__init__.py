"""Fine-tuning jobs: their spec, state machine, events and checkpoints, and the estimate."""
