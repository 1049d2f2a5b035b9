"""The authorization-code flow (RFC 6749 §4.1 with PKCE, RFC 7636; RFC 9700's advice).

Starting a flow stores a pending request (`connect_state`): the SHA-256 of a fresh 256-bit
`state`, the secret, who started it, the SHA-256 of a cookie that binds it to the browser, the
PKCE verifier and OIDC nonce (encrypted), the scopes and `return_to`, expiring in 10 minutes.
The callback consumes it with one compare-and-set UPDATE (unused and unexpired -> used), in a
transaction of its own that commits before anything is sent: a forged, expired or replayed
`state`, or another browser, ends there with zero calls to the token endpoint and nothing
changed. Only then is the code exchanged (no transaction is open across that call), the ID
token verified, and the tokens stored in one transaction (app/connect/tokens.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from app.config import Settings
from app.connect.client import (
    TokenEndpointError,
    clean_text,
    client_credentials,
    token_request,
)
from app.connect.idtoken import verify_id_token
from app.connect.models import ConnectLink, ConnectState
from app.connect.tokens import TokenSet, connected_secret, store_connection
from app.crypto import Keyring
from app.db import utcnow
from app.errors import Conflict, InvalidInput, RunFailed, TokenfarmError
from app.outbound import Outbound
from app.pipeline.wire import origin_of_url
from app.presets.binder import refresher_id
from app.providers.resolve import ResolvedProvider, resolve_provider
from app.runs.models import Run, RunSecret
from app.secrets.models import Secret

logger = logging.getLogger("tokenfarm.connect")

STATE_LIFETIME = timedelta(minutes=10)
MAX_LINK_SECONDS = 3600
COOKIE_PREFIX = "tokenfarm_connect_"
CALLBACK_PATH = "/connect/callback"
RUN_SERVICE = "connect"  # the run log's "service" of connect attempts: connect/{secret}


class PublicUrlNotSet(Conflict):
    """The connect flow needs TOKENFARM_PUBLIC_URL: it is the redirect URI's base."""

    error_type = "public_url_not_set"


def digest(value: str) -> str:
    """SHA-256 hex of a value that travels in URLs or cookies; only this is stored."""
    return hashlib.sha256(value.encode()).hexdigest()


def cookie_name(state: str) -> str:
    """The cookie binding one flow to its browser: one per flow, so parallel flows coexist."""
    return COOKIE_PREFIX + digest(state)[:16]


def callback_url(settings: Settings) -> str:
    """The redirect URI, exactly as registered at the provider; 409 without a public URL."""
    url = settings.connect_callback_url
    if url is None:
        raise PublicUrlNotSet(
            "the connect flow needs TOKENFARM_PUBLIC_URL (the address browsers reach tokenfarm "
            "at, e.g. https://tokenfarm.example.com): set it, and register "
            "{TOKENFARM_PUBLIC_URL}/connect/callback as the redirect URI at the provider"
        )
    return url


def checked_return_to(settings: Settings, return_to: str | None) -> str | None:
    """`return_to` when its origin is in TOKENFARM_CONNECT_RETURN_ORIGINS; else a 422."""
    if return_to is None:
        return None
    try:
        origin = origin_of_url(return_to)
    except ValueError:
        raise InvalidInput(
            "return_to: must be an absolute https:// URL", path="return_to"
        ) from None
    if origin not in settings.return_origins:
        raise InvalidInput(
            f"return_to: the origin {origin} is not in TOKENFARM_CONNECT_RETURN_ORIGINS (add it "
            "there to send browsers back to it after a connect)",
            path="return_to",
        )
    return return_to


@dataclass(frozen=True)
class Started:
    """A started flow: where to send the browser, and the cookie that binds it."""

    authorize_url: str
    cookie_name: str
    cookie_value: str
    secure: bool


def _challenge(verifier: str) -> str:
    digest_bytes = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest_bytes).rstrip(b"=").decode("ascii")


def _with_query(url: str, params: dict[str, str]) -> str:
    """`url` with `params` added to its query (the URL's own parameters stay)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    return urlunsplit(parts._replace(query=urlencode([*query, *params.items()])))


async def start_flow(
    session: AsyncSession,
    keyring: Keyring,
    settings: Settings,
    secret_name: str,
    *,
    initiator: str,
    return_to: str | None,
    subject: str | None = None,
    outbound: Outbound | None = None,
) -> Started:
    """Store a pending authorization request for `secret_name` and answer where to send the
    browser (the provider's authorization endpoint), in the caller's transaction."""
    redirect_uri = callback_url(settings)
    return_to = checked_return_to(settings, return_to)
    secret, _ = await connected_secret(session, secret_name)
    assert secret.provider is not None and secret.id is not None
    provider = await resolve_provider(session, secret.provider, outbound)
    if provider.authorization_url is None:
        raise Conflict(
            f"provider {provider.name!r} has no authorization endpoint; set its "
            "authorization_url (or issuer), or connect with the device flow "
            f"(POST /v1/secrets/{secret_name}/device-authorizations)"
        )
    credentials = await client_credentials(session, keyring, settings, provider)
    state = secrets.token_urlsafe(32)
    browser = secrets.token_urlsafe(32)
    nonce = secrets.token_urlsafe(24)
    verifier = secrets.token_urlsafe(64) if provider.pkce else None
    scopes = list(secret.scopes or provider.scopes)
    now = utcnow()
    session.add(
        ConnectState(
            state_hash=digest(state),
            secret_id=secret.id,
            subject=subject,
            initiator=initiator,
            browser_hash=digest(browser),
            verifier=keyring.encrypt(verifier) if verifier else None,
            nonce=keyring.encrypt(nonce),
            scopes=scopes,
            return_to=return_to,
            created_at=now,
            expires_at=now + STATE_LIFETIME,
        )
    )
    await session.flush()
    params = {str(k): str(v) for k, v in provider.authorize_params.items()}
    params.update(
        response_type="code",
        client_id=credentials.client_id,
        redirect_uri=redirect_uri,
        state=state,
    )
    if scopes:
        params["scope"] = " ".join(scopes)
    if "openid" in scopes:
        params["nonce"] = nonce
    if verifier is not None:
        params.update(code_challenge=_challenge(verifier), code_challenge_method="S256")
    return Started(
        authorize_url=_with_query(provider.authorization_url, params),
        cookie_name=cookie_name(state),
        cookie_value=browser,
        secure=settings.public_url_is_https,
    )


# --- connect links ------------------------------------------------------------------------------


async def create_link(
    session: AsyncSession,
    settings: Settings,
    secret_name: str,
    *,
    initiator: str,
    return_to: str | None,
    expires_in: int = MAX_LINK_SECONDS,
) -> tuple[str, datetime]:
    """A single-use link (at most an hour) that starts the flow for whoever opens it."""
    base = callback_url(settings).removesuffix(CALLBACK_PATH)
    return_to = checked_return_to(settings, return_to)
    secret, _ = await connected_secret(session, secret_name)
    assert secret.id is not None
    token = secrets.token_urlsafe(32)
    expires_at = utcnow() + timedelta(seconds=min(expires_in, MAX_LINK_SECONDS))
    session.add(
        ConnectLink(
            token_hash=digest(token),
            secret_id=secret.id,
            initiator=initiator,
            return_to=return_to,
            expires_at=expires_at,
        )
    )
    await session.flush()
    return f"{base}/connect/link?{urlencode({'token': token})}", expires_at


class FlowRefused(TokenfarmError):
    """A link or callback that can't go on; answered as an HTML page, never as JSON."""

    status_code = 400
    error_type = "connect_refused"

    def __init__(self, message: str, *, hint: str, status: int = 400) -> None:
        super().__init__(message)
        self.hint = hint
        self.status_code = status


async def open_link(
    session: AsyncSession,
    keyring: Keyring,
    settings: Settings,
    token: str,
    outbound: Outbound | None = None,
) -> Started:
    """Use a link (once: a compare-and-set marks it used) and start its flow, in the caller's
    transaction: if the flow can't start, the link stays unused."""
    now = utcnow()
    used = await session.execute(
        update(ConnectLink)
        .where(
            col(ConnectLink.token_hash) == digest(token),
            col(ConnectLink.used_at).is_(None),
            col(ConnectLink.expires_at) > now,
        )
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    if used.rowcount != 1:  # type: ignore[attr-defined]
        raise FlowRefused(
            "This connect link is not valid: it is unknown, was already used, or has expired.",
            hint="Ask whoever sent it for a new link (links work once, for at most an hour).",
        )
    found = select(ConnectLink).where(col(ConnectLink.token_hash) == digest(token))
    link = (await session.execute(found)).scalar_one()
    secret = await session.get(Secret, link.secret_id)
    assert secret is not None
    return await start_flow(
        session,
        keyring,
        settings,
        secret.name,
        initiator=link.initiator,
        return_to=link.return_to,
        subject=link.subject,
        outbound=outbound,
    )


# --- the callback ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Connected:
    """A callback that stored the tokens: which secret, and where the browser goes next."""

    secret: str
    return_to: str | None


@dataclass(frozen=True)
class _Pending:
    """A consumed authorization request, decrypted."""

    secret: str
    initiator: str
    verifier: str | None
    nonce: str
    return_to: str | None


class Callback:
    """Handles `GET /connect/callback`; every outcome is recorded in the run log as
    `connect/{secret}` when the state named a secret."""

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        keyring: Keyring,
        settings: Settings,
        outbound: Outbound,
    ) -> None:
        self.session_factory = session_factory
        self.keyring = keyring
        self.settings = settings
        self.outbound = outbound

    async def handle(self, query: dict[str, str], cookies: dict[str, str]) -> Connected:
        """Check the state, then (only then) exchange the code and store the tokens; a
        FlowRefused says what went wrong and what to do."""
        state = query.get("state")
        if not state:
            raise FlowRefused(
                "The provider sent the browser back without a state parameter.",
                hint="Start the connect again from tokenfarm.",
            )
        started_at = utcnow()
        pending = await self._consume(state, cookies.get(cookie_name(state)))
        try:
            return await self._finish(pending, query)
        except FlowRefused as refused:
            await self._record(
                pending, started_at, refused.status_code, refused.error_type, refused.message
            )
            raise

    async def _consume(self, state: str, browser: str | None) -> _Pending:
        """Mark the request used (compare-and-set) and commit, before anything is sent."""
        now = utcnow()
        state_hash = digest(state)
        async with self.session_factory() as session, session.begin():
            claimed = await session.execute(
                update(ConnectState)
                .where(
                    col(ConnectState.state_hash) == state_hash,
                    col(ConnectState.used_at).is_(None),
                    col(ConnectState.expires_at) > now,
                )
                .values(used_at=now)
                .execution_options(synchronize_session=False)
            )
            row = (
                await session.execute(
                    select(ConnectState).where(col(ConnectState.state_hash) == state_hash)
                )
            ).scalar_one_or_none()
            if claimed.rowcount != 1 or row is None:  # type: ignore[attr-defined]
                why = (
                    "is unknown"
                    if row is None
                    else "was already used"
                    if row.used_at is not None
                    else "has expired"
                )
                logger.warning("connect callback refused: the state %s", why)
                raise FlowRefused(
                    f"This sign-in answer can't be used: its state {why}.",
                    hint="Start the connect again (each attempt works once, for 10 minutes).",
                )
            secret = await session.get(Secret, row.secret_id)
            assert secret is not None
            pending = _Pending(
                secret=secret.name,
                initiator=row.initiator,
                verifier=self.keyring.decrypt(row.verifier) if row.verifier else None,
                nonce=self.keyring.decrypt(row.nonce),
                return_to=row.return_to,
            )
            refused = None
            if browser is None or not hmac.compare_digest(digest(browser), row.browser_hash):
                refused = FlowRefused(
                    "This sign-in answer arrived in another browser than the one that started "
                    "the connect.",
                    hint="Open the connect link and finish it in the same browser.",
                )
                await self._record_in(session, pending, now, refused)
        if refused is not None:
            # Raised once committed: a state seen in another browser is burnt all the same.
            raise refused
        return pending

    async def _finish(self, pending: _Pending, query: dict[str, str]) -> Connected:
        error = query.get("error")
        if error:
            description = clean_text(query.get("error_description"), [], 200)
            said = clean_text(error, [], 64) or "error"
            raise FlowRefused(
                f"The provider did not grant access: {said}"
                + (f" ({description})" if description else "")
                + ".",
                hint="Nothing was changed. Try again, and choose Allow at the provider.",
            )
        code = query.get("code")
        if not code:
            raise FlowRefused(
                "The provider sent the browser back without an authorization code.",
                hint="Start the connect again.",
            )
        try:
            async with self.session_factory() as session:
                secret, _ = await connected_secret(session, pending.secret)
                assert secret.provider is not None
                provider = await resolve_provider(session, secret.provider, self.outbound)
                credentials = await client_credentials(
                    session, self.keyring, self.settings, provider
                )
            form = {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": callback_url(self.settings),
            }
            if pending.verifier is not None:
                form["code_verifier"] = pending.verifier
            answer = await token_request(self.outbound, credentials, provider, form)
            tokens = await self._tokens(answer, provider, credentials.client_id, pending)
        except TokenEndpointError as exc:
            refused_by_oauth = exc.error is not None and exc.upstream_status < 500
            raise FlowRefused(
                f"The provider refused the authorization code: {exc.message}."
                if refused_by_oauth
                else f"The provider's token endpoint failed: {exc.message}.",
                hint="Nothing was changed. Start the connect again; if it keeps failing, check "
                "the provider's client id, secret and redirect URI.",
                status=400 if refused_by_oauth else 502,
            ) from None
        except (RunFailed, TokenfarmError) as exc:
            raise FlowRefused(
                f"The code exchange failed: {exc.message}.",
                hint="Nothing was changed. Start the connect again; if it keeps failing, check "
                "the provider's settings.",
                status=502 if isinstance(exc, RunFailed) else 400,
            ) from None
        started_at = utcnow()
        async with self.session_factory() as session, session.begin():
            await store_connection(
                session,
                self.keyring,
                self.settings,
                pending.secret,
                tokens,
                how="authorization_code",
                actor=pending.initiator,
            )
            session.add_all(self._run(pending, started_at, 200, None, None, written=True))
        return_to = pending.return_to
        if return_to is not None:
            try:
                return_to = checked_return_to(self.settings, return_to)
            except InvalidInput:
                return_to = None  # no longer allowed since the link was made: show the page
        return Connected(secret=pending.secret, return_to=return_to)

    async def _tokens(
        self,
        answer: dict[str, Any],
        provider: ResolvedProvider,
        client_id: str,
        pending: _Pending,
    ) -> TokenSet:
        try:
            tokens = TokenSet.from_answer(answer)
        except ValueError as exc:
            raise FlowRefused(
                f"The provider's answer is unusable: {exc}.",
                hint="Nothing was changed. Start the connect again.",
                status=502,
            ) from None
        id_token = answer.get("id_token")
        if isinstance(id_token, str) and id_token:
            claims = await verify_id_token(
                self.outbound,
                provider,
                id_token=id_token,
                client_id=client_id,
                nonce=pending.nonce,
                access_token=tokens.access_token,
            )
            tokens = TokenSet(
                tokens.access_token, tokens.refresh_token, tokens.expires_in, tokens.scope, claims
            )
        return tokens

    def _run(
        self,
        pending: _Pending,
        started_at: datetime,
        http_status: int,
        error_type: str | None,
        message: str | None,
        *,
        written: bool,
    ) -> list[Run | RunSecret]:
        return attempt_rows(
            pending.secret,
            pending.initiator,
            started_at,
            http_status,
            error_type,
            message,
            written=written,
        )

    async def _record_in(
        self, session: AsyncSession, pending: _Pending, started_at: datetime, refused: FlowRefused
    ) -> None:
        session.add_all(
            self._run(
                pending,
                started_at,
                refused.status_code,
                refused.error_type,
                refused.message,
                written=False,
            )
        )
        await session.flush()

    async def _record(
        self, pending: _Pending, started_at: datetime, status: int, error_type: str, message: str
    ) -> None:
        """Record a failed attempt (its own transaction: the secret is not touched)."""
        async with self.session_factory() as session, session.begin():
            session.add_all(
                self._run(pending, started_at, status, error_type, message, written=False)
            )


def attempt_rows(
    secret: str,
    initiator: str,
    started_at: datetime,
    http_status: int,
    error_type: str | None,
    message: str | None,
    *,
    written: bool,
) -> list[Run | RunSecret]:
    """A connect attempt (browser or device grant) as the run log shows it: `connect/{secret}`,
    trigger `connect`, for the caller's session to add. `message` must quote no secret."""
    run_id = str(uuid.uuid4())
    return [
        Run(
            id=run_id,
            service_slug=RUN_SERVICE,
            endpoint_readable_id=refresher_id(secret),
            trigger="connect",
            actor=initiator,
            status="succeeded" if error_type is None else "failed",
            http_status=http_status,
            error_type=error_type,
            error_class="permanent" if error_type else None,
            error_message=message,
            started_at=started_at,
            finished_at=utcnow(),
            duration_ms=round((utcnow() - started_at).total_seconds() * 1000, 1),
            trace=[],
        ),
        RunSecret(run_id=run_id, secret_name=secret, written=written),
    ]
