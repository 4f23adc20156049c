"""Drengr ingest: a self-hosted, Segment-compatible analytics endpoint."""

__version__ = "0.1.0"
