"""losses stage of PIVOT."""
