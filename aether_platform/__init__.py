"""Aether: the event backbone's domain core.

Modules here import neither FastAPI nor Dagster; `api/` and `aether_platform.definitions`
are thin shells around them.
"""
