"""Fixtures of the services tests: callers holding exactly the permissions a test names (the
`callers` fixture of tests/auth, shared rather than written again)."""

from tests.auth.conftest import callers

__all__ = ["callers"]
