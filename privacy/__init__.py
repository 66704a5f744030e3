"""fedguard privacy package."""
