"""driftloop serving stage."""
