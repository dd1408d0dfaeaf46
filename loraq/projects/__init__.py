"""Projects (tenants): their API keys, their limits, and Idempotency-Key replays."""
