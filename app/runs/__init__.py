"""Runs: executions of endpoints, their triggers, and the run log."""
