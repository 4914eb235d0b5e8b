"""Bearer-token check for every route that reads or changes jobs.

With ``http.token`` empty (allowed only on loopback, see `streamer.config.HttpConfig`) every request
passes; otherwise the request needs ``Authorization: Bearer <token>``. The comparison takes constant time.

Only the live preview (an ``<img>`` in the dashboard, which cannot send headers) also takes the token as
``?token=``; uvicorn's access log is off, so the URL with the token is not written anywhere by vosd.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import HTTPException, Query, Request


def require_token(request: Request) -> None:
    """FastAPI dependency: 401 without the configured bearer token."""
    _check(request, request.headers.get("authorization", ""))


def require_token_or_query(
    request: Request,
    token: Annotated[str | None, Query(description="The API token, for an <img> (no headers).")] = None,
) -> None:
    """FastAPI dependency for streams a browser element opens: the bearer token, or ``?token=``."""
    _check(request, f"Bearer {token}" if token else request.headers.get("authorization", ""))


def _check(request: Request, authorization: str) -> None:
    token: str = request.app.state.ctx.config.http.token
    if not token:
        return
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise HTTPException(
            401,
            "missing bearer token: send Authorization: Bearer <token>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise HTTPException(401, "invalid bearer token", headers={"WWW-Authenticate": "Bearer"})
