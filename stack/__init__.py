"""The local stack: start, stop and check Prefect, Prometheus, Alertmanager and driftloop's own servers."""
