"""api stage of PIVOT."""
