"""Delivery: the router that takes the `events` log to each destination, isolated and retried."""
