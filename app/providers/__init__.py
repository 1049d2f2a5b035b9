"""OAuth 2.0 / OpenID Connect providers: the authorization servers connected secrets come from."""
