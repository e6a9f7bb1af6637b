"""transforms stage of PIVOT."""
