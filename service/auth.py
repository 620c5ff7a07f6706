"""API keys: ``Authorization: Bearer <key>`` on every compute, model and repository route.

Keys come from ``CNN_API_KEYS`` (comma-separated) and/or ``CNN_API_KEYS_FILE`` (a mounted
secret, one key per line; blank lines and lines starting with ``#`` are skipped). With
neither set the service is open and :class:`ApiKeyMiddleware` is not installed at all, so
an open service pays nothing per request.

Open whatever the keys: the probes and the scrape target (``/health/*``, ``/v2/health/*``,
``/metrics``), the documentation (``/docs``, ``/redoc``, ``/openapi.json``, their static
assets) and the tutorial page (``/``, ``/ui/*``, which asks for a key before it computes).
Everything else needs a key, the V2 server metadata ``GET /v2`` and unknown paths included
(an unauthenticated caller learns nothing about which routes exist).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from . import metrics
from .problems import is_v2_path, problem_response
from .settings import Settings

#: Paths that never need a key: exact paths, and prefixes (everything below them).
OPEN_PATHS = frozenset({"/", "/metrics", "/docs", "/redoc", "/openapi.json"})
OPEN_PREFIXES = ("/health/", "/v2/health/", "/static/", "/ui/")

#: A key is visible ASCII without commas (RFC 6750's b64token is a subset), 1 to 256 chars.
_KEY = re.compile(r"[\x21-\x2b\x2d-\x7e]{1,256}")


class ApiKeyError(ValueError):
    """The configured keys are unusable (a bad key, an unreadable or empty key file)."""


def load_keys(settings: Settings) -> tuple[str, ...]:
    """The API keys in force, from ``settings.api_keys`` and ``settings.api_keys_file``.

    Returns
    -------
    tuple of str
        Empty when neither setting is given (an open service).

    Raises
    ------
    ApiKeyError
        If a key has characters a bearer token cannot carry (the message says which
        entry, never the key), or the key file cannot be read or holds no key: a secret
        that failed to mount must not silently open the service.
    """
    keys: list[str] = []
    if settings.api_keys:
        keys += _checked(settings.api_keys.get_secret_value().split(","), "CNN_API_KEYS entry")
    if settings.api_keys_file is not None:
        path = Path(settings.api_keys_file)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ApiKeyError(f"CNN_API_KEYS_FILE {path}: cannot be read ({exc})") from None
        lines = [ln for ln in text.splitlines() if not ln.strip().startswith("#")]
        from_file = _checked(lines, f"CNN_API_KEYS_FILE {path}: line")
        if not from_file:
            raise ApiKeyError(f"CNN_API_KEYS_FILE {path}: holds no key")
        keys += from_file
    return tuple(dict.fromkeys(keys))  # duplicates dropped, order kept


def _checked(entries: Iterable[str], what: str) -> list[str]:
    keys = []
    for i, entry in enumerate(entries, start=1):
        key = entry.strip()
        if not key:
            continue
        if not _KEY.fullmatch(key):
            raise ApiKeyError(
                f"{what} {i}: a key must be 1 to 256 visible ASCII characters without "
                "spaces or commas"
            )
        keys.append(key)
    return keys


def document_keys(app: FastAPI) -> None:
    """Declare the bearer key in the app's OpenAPI document (Swagger UI's "Authorize"):
    required everywhere but on the open paths."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        spec = build()
        if "bearer" not in spec.setdefault("components", {}).get("securitySchemes", {}):
            spec["components"].setdefault("securitySchemes", {})["bearer"] = {
                "type": "http",
                "scheme": "bearer",
                "description": "An API key of CNN_API_KEYS or CNN_API_KEYS_FILE.",
            }
            spec["security"] = [{"bearer": []}]
            for path, operations in spec.get("paths", {}).items():
                if is_open(path):
                    for operation in operations.values():
                        operation["security"] = []
        return spec

    app.openapi = openapi  # type: ignore[method-assign]


def is_open(path: str) -> bool:
    """Whether ``path`` is served without a key (probes, metrics, documentation)."""
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


class KeyCheck:
    """Whether an ``Authorization`` value carries one of the configured keys; what the
    HTTP middleware and the gRPC interceptor both ask.

    The offered key is hashed and compared with ``hmac.compare_digest`` against every
    configured key's hash, all of them each time: neither its length nor which key it
    resembles shows in the time taken. The key is never logged.

    Raises
    ------
    ValueError
        If ``keys`` is empty.
    """

    def __init__(self, keys: Iterable[str]) -> None:
        self.digests = [_digest(key.encode()) for key in keys]
        if not self.digests:
            raise ValueError("an API key check needs at least one key")

    def accepts(self, authorization: bytes | str | None) -> bool:
        """Whether ``Bearer <key>`` carries one of the keys."""
        if authorization is None:
            return False
        if isinstance(authorization, str):
            authorization = authorization.encode("utf-8", "replace")
        scheme, _, token = authorization.strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        offered = _digest(token.strip())
        matched = False
        for digest in self.digests:  # no early exit: the time does not depend on which matched
            matched |= hmac.compare_digest(offered, digest)
        return matched


class ApiKeyMiddleware:
    """Refuses (401) a request to a protected path without a valid bearer key
    (:class:`KeyCheck`).

    Installed inside the metrics middleware, so refusals are counted by route and status,
    and outside the body limit, so a refused request's body is never read (uvicorn's
    access log has no headers: the key is never logged).

    Parameters
    ----------
    app
        The ASGI app to wrap.
    keys
        Accepted keys (at least one).
    """

    def __init__(self, app: ASGIApp, keys: Iterable[str]) -> None:
        self.app = app
        self.check = KeyCheck(keys)

    def accepts(self, authorization: bytes | None) -> bool:
        """Whether an ``Authorization`` header value carries one of the keys."""
        return self.check.accepts(authorization)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        authorization = dict(scope.get("headers", [])).get(b"authorization")
        if self.accepts(authorization):
            await self.app(scope, receive, send)
            return
        reason = "missing" if authorization is None else "invalid"
        metrics.REJECTED.labels(limit="auth").inc()
        await _unauthorized(scope, receive, send, reason)


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


async def _unauthorized(scope: Scope, receive: Receive, send: Send, reason: str) -> None:
    """A 401 in the dialect of the path (problem details, with the V2 protocol's ``error``
    member on ``/v2``), ``WWW-Authenticate`` as RFC 6750 describes."""
    if reason == "missing":
        detail = "this route needs an API key: send 'Authorization: Bearer <key>'"
        challenge = 'Bearer realm="cnn-service"'
    else:
        detail = "the API key is not valid (expected 'Authorization: Bearer <key>')"
        challenge = 'Bearer realm="cnn-service", error="invalid_token"'
    response = problem_response(
        401,
        detail,
        [(["header", "authorization"], f"{reason} API key")],
        headers={"WWW-Authenticate": challenge},
        v2=is_v2_path(scope["path"]),
    )
    await response(scope, receive, send)
