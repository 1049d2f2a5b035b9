"""tokenfarm: keeps OAuth 2.0 access tokens and other short-lived secrets fresh."""

__version__ = "0.1.0"
