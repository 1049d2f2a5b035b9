"""Schedules and the scheduler: cron-driven runs and expiry-driven refreshes."""
