"""Netsonde package (filled in by its issue)."""
