"""Dagster code location: assembles the per-domain definitions. Thin shell over the core."""
from __future__ import annotations

import dagster as dg

defs = dg.Definitions()
