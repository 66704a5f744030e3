"""fedguard assistant package."""
