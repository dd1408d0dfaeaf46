"""Route modules, one per kind of resource."""
