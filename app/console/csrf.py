"""CSRF protection of console forms: a synchronizer token bound to the session.

Every state-changing form carries `csrf_token` (the session's, `ConsoleUser.csrf_token`); a post
without it, or with another one, is refused with a 403 page before anything is read or changed.
SameSite=Lax on the session cookie already keeps most cross-site posts from carrying it; this is
the check that does not depend on the browser.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from starlette.datastructures import FormData

from app.console.sessions import ConsoleUserDep

FIELD = "csrf_token"


class CsrfRefused(Exception):
    """A state-changing form came without this session's CSRF token."""


def token_matches(submitted: object, expected: str) -> bool:
    """Whether a submitted form field is the session's token (in constant time)."""
    return isinstance(submitted, str) and hmac.compare_digest(submitted.encode(), expected.encode())


async def checked_form(request: Request, user: ConsoleUserDep) -> FormData:
    """The form of a state-changing post by a logged-in user, once its CSRF token checks out."""
    form = await request.form()
    if not token_matches(form.get(FIELD), user.csrf_token):
        raise CsrfRefused
    return form


CheckedForm = Annotated[FormData, Depends(checked_form)]
