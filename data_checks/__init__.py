"""driftloop data_checks stage."""
