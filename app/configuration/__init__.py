"""Config as code: one YAML document declares roles, accounts, secrets, services and schedules."""
