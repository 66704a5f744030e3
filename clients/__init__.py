"""fedguard clients package."""
