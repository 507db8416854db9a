"""driftloop monitoring stage."""
