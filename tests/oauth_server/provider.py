"""The authorization server process: django-oauth-toolkit configured in code, served on loopback.

Run as `python -m tests.oauth_server.provider --data-dir DIR [--access-token-seconds N]` from the
repository root (tests/oauth_server/__init__.py does it). Django's settings are global to a
process and pytest runs several xdist workers, so each worker gets its own server process.

The process binds 127.0.0.1 on a free port, configures Django (the issuer is that base URL),
migrates a SQLite file in DIR, seeds the users and an introspection client, then prints one JSON
line on stdout (`port`, introspection credentials) and serves until terminated.

Besides DOT's own endpoints (mounted at the root, so `{issuer}/.well-known/openid-configuration`
is the discovery document) it serves `/_control/...` for the tests: create clients, read the
token endpoint's request log, inject faults, revoke a user's grants. FaultMiddleware, outermost,
keeps the log and applies the faults.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import secrets
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from tests.oauth_server import USERS

TOKEN_PATH = "/token/"
# OIDC discovery and RFC 8414 metadata: the wrong-issuer fault rewrites both.
METADATA_PATHS = ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server")
SCOPES = {
    "openid": "OpenID Connect",
    "email": "Your email address",
    "profile": "Your profile",
    "read": "Read",
    "write": "Write",
    "introspection": "Introspect tokens",
}
GRANT_TYPES = {
    "authorization_code": "authorization-code",
    "device_code": "urn:ietf:params:oauth:grant-type:device_code",
    "client_credentials": "client-credentials",
}
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


class ControlState:
    """The request log and pending faults, shared by the server's request threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        # DOT locks the refresh token row with SELECT ... FOR UPDATE, which SQLite ignores; one
        # token request at a time gives the serialisation a PostgreSQL-backed DOT would have.
        self.token_lock = threading.Lock()
        self.log: list[dict[str, Any]] = []
        self.reset_faults()

    def reset_faults(self) -> None:
        """No fault pending."""
        self.fail_after_count = 0
        self.fail_after_status = 502
        self.slow_down_count = 0
        self.wrong_issuer = False


STATE = ControlState()


def _sha256(value: str | None) -> str | None:
    return hashlib.sha256(value.encode()).hexdigest() if value else None


def _client_id(form: dict[str, list[str]], authorization: str) -> str | None:
    """The client id of a token request (form or HTTP Basic); never the secret."""
    if form.get("client_id"):
        return form["client_id"][0]
    if authorization.lower().startswith("basic "):
        try:
            decoded = base64.b64decode(authorization[6:]).decode()
        except (ValueError, UnicodeDecodeError):
            return None
        return decoded.split(":", 1)[0]
    return None


class FaultMiddleware:
    """Logs every token endpoint call (hashes, never tokens) and applies the injected faults."""

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        if request.path == TOKEN_PATH and request.method == "POST":
            with STATE.token_lock:
                return self._token(request)
        response = self.get_response(request)
        if request.path.rstrip("/") in METADATA_PATHS and STATE.wrong_issuer:
            from django.http import JsonResponse

            document = json.loads(response.content)
            document["issuer"] = "https://wrong-issuer.example.com"
            return JsonResponse(document, status=response.status_code)
        return response

    def _token(self, request: Any) -> Any:
        from django.http import HttpResponse, JsonResponse

        form = parse_qs(request.body.decode(errors="replace"))  # caches the body for DOT
        grant_type = form.get("grant_type", [None])[0]
        entry: dict[str, Any] = {
            "grant_type": grant_type,
            "client_id": _client_id(form, request.headers.get("Authorization", "")),
            "refresh_token_sha256": _sha256(form.get("refresh_token", [None])[0]),
            "fault": None,
        }
        with STATE.lock:
            slow_down = grant_type == DEVICE_GRANT and STATE.slow_down_count > 0
            if slow_down:
                STATE.slow_down_count -= 1
        if slow_down:
            response = JsonResponse({"error": "slow_down"}, status=400)
            entry.update(status=400, error="slow_down", fault="slow_down")
        else:
            response = self.get_response(request)
            entry["status"] = response.status_code
            entry["error"] = _error_code(response)
            with STATE.lock:
                fail = STATE.fail_after_count > 0
                if fail:
                    STATE.fail_after_count -= 1
                    status = STATE.fail_after_status
            if fail:
                entry.update(processed_status=response.status_code, status=status)
                entry["fault"] = "fail_after_processing"
                response = HttpResponse(
                    b"upstream proxy error", status=status, content_type="text/plain"
                )
        with STATE.lock:
            STATE.log.append(entry)
        return response


def _error_code(response: Any) -> str | None:
    if response.status_code < 400:
        return None
    try:
        return str(json.loads(response.content).get("error"))
    except (ValueError, AttributeError):
        return None


def _json_body(request: Any) -> dict[str, Any]:
    return json.loads(request.body or b"{}")


def control_log(request: Any) -> Any:
    """GET: the token endpoint's request log; DELETE: empty it."""
    from django.http import JsonResponse

    with STATE.lock:
        if request.method == "DELETE":
            STATE.log.clear()
        return JsonResponse({"requests": list(STATE.log)})


def control_faults(request: Any) -> Any:
    """POST: set faults (fields present are set); DELETE: clear every fault."""
    from django.http import JsonResponse

    body = _json_body(request) if request.method == "POST" else {}
    with STATE.lock:
        if request.method == "DELETE":
            STATE.reset_faults()
        if "fail_after_processing" in body:
            STATE.fail_after_count = int(body["fail_after_processing"]["count"])
            STATE.fail_after_status = int(body["fail_after_processing"].get("status", 502))
        if "slow_down_next" in body:
            STATE.slow_down_count = int(body["slow_down_next"])
        if "wrong_issuer_in_discovery" in body:
            STATE.wrong_issuer = bool(body["wrong_issuer_in_discovery"])
        return JsonResponse(
            {
                "fail_after_processing": STATE.fail_after_count,
                "slow_down_next": STATE.slow_down_count,
                "wrong_issuer_in_discovery": STATE.wrong_issuer,
            }
        )


def control_clients(request: Any) -> Any:
    """POST: register an application; answers its client id and (plain) secret."""
    from django.http import JsonResponse
    from oauth2_provider.models import Application

    body = _json_body(request)
    grant = body.get("grant_type", "authorization_code")
    if grant not in GRANT_TYPES:
        return JsonResponse(
            {"error": f"grant_type must be one of {sorted(GRANT_TYPES)}"}, status=400
        )
    confidential = bool(body.get("confidential", True))
    secret = secrets.token_urlsafe(24) if confidential else ""
    application = Application(
        name=body.get("name", "tokenfarm test client"),
        client_type=Application.CLIENT_CONFIDENTIAL if confidential else Application.CLIENT_PUBLIC,
        authorization_grant_type=GRANT_TYPES[grant],
        redirect_uris=" ".join(body.get("redirect_uris", [])),
        skip_authorization=bool(body.get("skip_authorization", False)),
        algorithm=Application.RS256_ALGORITHM,
        client_secret=secret,
    )
    application.save()
    return JsonResponse({"client_id": application.client_id, "client_secret": secret or None})


def control_revoke_user(request: Any) -> Any:
    """POST {"user"}: revoke every token and grant the user holds, as they could at the provider."""
    from django.contrib.auth import get_user_model
    from django.http import JsonResponse
    from oauth2_provider.models import AccessToken, Grant, RefreshToken

    user = get_user_model().objects.get(username=_json_body(request)["user"])
    refresh_tokens = list(RefreshToken.objects.filter(user=user, revoked__isnull=True))
    for refresh_token in refresh_tokens:
        refresh_token.revoke()
    access_tokens = list(AccessToken.objects.filter(user=user))
    for access_token in access_tokens:
        access_token.revoke()
    Grant.objects.filter(user=user).delete()
    return JsonResponse(
        {"refresh_tokens": len(refresh_tokens), "access_tokens": len(access_tokens)}
    )


def control_refresh_token(request: Any) -> Any:
    """POST {"token"}: whether a refresh token is known and revoked (introspection is for
    access tokens only in DOT)."""
    from django.http import JsonResponse
    from oauth2_provider.models import RefreshToken

    token = RefreshToken.objects.filter(token=_json_body(request)["token"]).first()
    if token is None:
        return JsonResponse({"known": False, "revoked": None})
    return JsonResponse({"known": True, "revoked": token.revoked is not None})


def _urlpatterns() -> list[Any]:
    from django.contrib.auth import views as auth_views
    from django.urls import include, path
    from django.views.decorators.csrf import csrf_exempt

    return [
        path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
        path("_control/log", csrf_exempt(control_log)),
        path("_control/faults", csrf_exempt(control_faults)),
        path("_control/clients", csrf_exempt(control_clients)),
        path("_control/revoke-user", csrf_exempt(control_revoke_user)),
        path("_control/refresh-token", csrf_exempt(control_refresh_token)),
        path("", include("oauth2_provider.urls", namespace="oauth2_provider")),
    ]


urlpatterns: list[Any] = []


def _rsa_key_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def configure(base_url: str, data_dir: Path, access_token_seconds: int) -> None:
    """Django settings in code: SQLite in data_dir, DOT with rotation, reuse protection, PKCE."""
    import django
    from django.conf import settings

    settings.configure(
        DEBUG=False,
        SECRET_KEY=secrets.token_urlsafe(32),
        ALLOWED_HOSTS=["127.0.0.1", "localhost"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=[
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "oauth2_provider",
        ],
        MIDDLEWARE=[
            f"{__name__}.FaultMiddleware",
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.middleware.csrf.CsrfViewMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
        ],
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": str(data_dir / "provider.sqlite3"),
                "OPTIONS": {"timeout": 30},
            }
        },
        TEMPLATES=[
            {
                "BACKEND": "django.template.backends.django.DjangoTemplates",
                "DIRS": [str(Path(__file__).parent / "templates")],
                "APP_DIRS": True,
                "OPTIONS": {
                    "context_processors": [
                        "django.template.context_processors.request",
                        "django.contrib.auth.context_processors.auth",
                    ]
                },
            }
        ],
        # Fast hashing: these are throwaway test users and client secrets.
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
        LOGIN_URL="/accounts/login/",
        USE_TZ=True,
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        # Tables straight from the models (`migrate --run-syncdb`): replaying DOT's and auth's
        # forty-odd migrations took most of the start-up (8 s of 10 on a busy machine).
        MIGRATION_MODULES={
            app: None for app in ("auth", "contenttypes", "sessions", "oauth2_provider")
        },
        LOGGING={
            "version": 1,
            "disable_existing_loggers": False,
            "handlers": {"stderr": {"class": "logging.StreamHandler"}},
            # django.server would log request lines, whose query strings carry state and codes.
            "loggers": {
                "django.server": {"handlers": [], "level": "CRITICAL", "propagate": False},
                "django.request": {"handlers": ["stderr"], "level": "ERROR"},
            },
        },
        OAUTH2_PROVIDER={
            "PKCE_REQUIRED": True,
            "ROTATE_REFRESH_TOKEN": True,
            "REFRESH_TOKEN_REUSE_PROTECTION": True,
            "REFRESH_TOKEN_GRACE_PERIOD_SECONDS": 0,
            "ACCESS_TOKEN_EXPIRE_SECONDS": access_token_seconds,
            "OIDC_ENABLED": True,
            "OIDC_RSA_PRIVATE_KEY": _rsa_key_pem(),
            "OIDC_ISS_ENDPOINT": base_url,
            "SCOPES": SCOPES,
            "DEFAULT_SCOPES": ["read"],
            "ALLOWED_REDIRECT_URI_SCHEMES": ["http", "https"],
            "OAUTH_DEVICE_VERIFICATION_URI": f"{base_url}/device/",
            "DEVICE_FLOW_INTERVAL": 1,
        },
    )
    django.setup()
    urlpatterns[:] = _urlpatterns()


def seed() -> dict[str, str]:
    """Migrate, create the users and a confidential client allowed to introspect."""
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from oauth2_provider.models import Application

    call_command("migrate", run_syncdb=True, verbosity=0, interactive=False)
    user_model = get_user_model()
    for email, password in USERS.items():
        user_model.objects.create_user(username=email, email=email, password=password)
    secret = secrets.token_urlsafe(24)
    introspector = Application(
        name="introspector",
        client_type=Application.CLIENT_CONFIDENTIAL,
        authorization_grant_type=Application.GRANT_CLIENT_CREDENTIALS,
        client_secret=secret,
    )
    introspector.save()
    return {
        "introspection_client_id": introspector.client_id,
        "introspection_client_secret": secret,
    }


def main() -> None:
    """Bind, configure, seed, announce the port on stdout, serve."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--access-token-seconds", type=int, default=60)
    args = parser.parse_args()

    from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            """Request lines carry codes and state in their query strings: never logged."""

    server = ThreadedWSGIServer(("127.0.0.1", 0), QuietHandler)
    port = server.server_address[1]
    configure(f"http://127.0.0.1:{port}", args.data_dir, args.access_token_seconds)
    credentials = seed()

    from django.core.wsgi import get_wsgi_application

    server.set_app(get_wsgi_application())
    sys.stdout.write(json.dumps({"port": port, **credentials}) + "\n")
    sys.stdout.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()
