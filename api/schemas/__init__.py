"""The wire models, one module per resource: `*Create` what a client sends, `*Public` what it gets back."""
