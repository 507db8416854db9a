"""driftloop registry stage."""
