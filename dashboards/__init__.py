"""Grafana dashboards as code (grafana-foundation-sdk), the generated JSON and provisioning files."""
