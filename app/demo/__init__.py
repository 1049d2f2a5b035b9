"""Demo helpers: a real OAuth 2.0 token server and a loopback ASGI runner for tests."""
