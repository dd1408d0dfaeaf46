"""The HTTP face of loraq: thin routes over the `loraq` domain. Never imports torch or `worker`."""
