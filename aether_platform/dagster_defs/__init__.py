"""The Dagster shell of the platform, one module per domain; the logic lives in the plain-Python
core (aether_platform.relay, aether_platform.key_expiry, aether_platform.topics)."""
