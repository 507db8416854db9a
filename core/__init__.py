"""driftloop: validate, train pipeline-parallel, register, serve, monitor drift, retrain."""

__version__ = "0.1.0"
