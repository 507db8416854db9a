"""driftloop training stage."""
