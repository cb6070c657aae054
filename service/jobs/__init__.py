"""Batch scoring jobs: store, sources, runner, Ray engine."""
