"""Webhooks: signed notifications when a secret fails, needs re-authorization or recovers."""
