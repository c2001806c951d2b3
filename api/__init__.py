"""HTTP shell of the platform: CRM API, SSE stream, Command Center, metrics and health."""
