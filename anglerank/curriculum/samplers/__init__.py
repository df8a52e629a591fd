"""Built-in samplers, one per file; each registers itself by name (see ..registry)."""
