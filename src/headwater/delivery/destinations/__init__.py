"""Destination types: one module each, registered by type name (see `base`)."""
