"""Skydive's extension steps (placeholder, filled below)."""
