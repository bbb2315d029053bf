"""Measurement of latency and importance tables on real backends and data."""
