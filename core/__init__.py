"""driftloop: validate, train pipeline-parallel, register, serve, monitor drift, retrain."""

from driftloop.env import switch_off_telemetry

__version__ = "0.1.0"

# Here, not in each stage: every `import driftloop.<anything>` runs this first, before GX, MLflow, Evidently or
# Prefect is imported.
switch_off_telemetry()
