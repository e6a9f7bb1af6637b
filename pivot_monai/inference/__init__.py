"""inference stage of PIVOT."""
