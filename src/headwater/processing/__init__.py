"""Stages on the log: the runtime, its steps, and the processor role (`ingest` -> `events`)."""
