"""handlers stage of PIVOT."""
