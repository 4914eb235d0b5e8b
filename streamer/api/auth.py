"""Bearer-token check for every route that reads or changes jobs.

With ``http.token`` empty (allowed only on loopback, see `streamer.config.HttpSettings`) every request
passes; otherwise the request needs ``Authorization: Bearer <token>``. The comparison takes constant time.
"""

from __future__ import annotations

import hmac

from fastapi import HTTPException, Request


def require_token(request: Request) -> None:
    """FastAPI dependency: 401 without the configured bearer token."""
    token: str = request.app.state.ctx.config.http.token
    if not token:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise HTTPException(
            401,
            "missing bearer token: send Authorization: Bearer <token>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise HTTPException(401, "invalid bearer token", headers={"WWW-Authenticate": "Bearer"})
