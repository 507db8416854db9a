"""driftloop flows stage."""
