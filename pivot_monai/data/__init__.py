"""data stage of PIVOT."""
