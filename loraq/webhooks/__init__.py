"""Webhooks: a project's endpoints, and the signed deliveries of its jobs' events to them."""
