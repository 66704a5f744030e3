"""fedguard server package."""
