"""SLOs as code: aether_platform/slo_spec.py → Grafana dashboard, Prometheus rules, promtool tests.

`python -m dashboards_py` (or `aether dashboards build`) writes them under dashboards_py/generated/.
"""
