"""The gateway: the Segment-compatible Tracking API, validation and stamping, durable acks."""
