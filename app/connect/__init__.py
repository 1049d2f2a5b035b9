"""Connected secrets: tokenfarm obtains the first tokens itself (authorization code + PKCE)."""
