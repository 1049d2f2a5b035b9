"""Secrets: named values, encrypted at rest, versioned, optionally one per environment."""
