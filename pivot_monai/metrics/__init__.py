"""metrics stage of PIVOT."""
