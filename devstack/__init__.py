"""Local stack tooling: installs and runs real PostgreSQL, Kafka and Prometheus for dev and tests."""
