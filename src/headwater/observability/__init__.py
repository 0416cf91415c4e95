"""Metrics: cheap per-process counters, merged across processes into Prometheus text."""
