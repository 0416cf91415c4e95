"""The Segment message model: decoding, validation (with reason codes) and server stamps.

The gateway validates with it before acknowledging; readers of the ingest log use it to build
the stamped message from what the client sent and the request's `Stamp`.
"""
