"""The service's failures as domain exceptions, and the one table mapping each to an HTTP
status and a gRPC status code.

Everything below the transports (the wire layer, the dataplane, the model repository)
raises these; REST's problem handler (:mod:`service.problems`) and the gRPC transport
both read :data:`STATUS` to answer, so a failure means the same thing on every transport.
No web framework is imported here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cnncore import CnnError

Loc = Sequence[str | int]


class ServiceError(Exception):
    """A refused or failed request: what went wrong, and the fields at fault.

    Parameters
    ----------
    detail
        Human-readable explanation.
    errors
        ``(loc, msg)`` pairs naming the fields at fault (``loc``: a path such as
        ``["inputs", 0, "shape"]``).
    headers
        Extra response headers (``Retry-After`` when overloaded).
    """

    def __init__(
        self,
        detail: str,
        errors: Iterable[tuple[Loc, str]] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = [(list(loc), msg) for loc, msg in errors]
        self.headers = dict(headers or {})

    @property
    def status(self) -> int:
        """The HTTP status (from :data:`STATUS`)."""
        return status_of(self)[0]

    @property
    def grpc_code(self) -> str:
        """The gRPC status code's name, e.g. ``"INVALID_ARGUMENT"`` (from :data:`STATUS`)."""
        return status_of(self)[1]


class BadRequestError(ServiceError):
    """A request that does not fit the protocol or the model (wrong shape, datatype,
    sizes that disagree with the body)."""


class InvalidError(ServiceError):
    """Well-formed values that do not fit together (``/v1``'s 422)."""


class UnauthenticatedError(ServiceError):
    """No valid API key."""


class PermissionDeniedError(ServiceError):
    """An operation this server's configuration forbids (model control in ``none`` mode)."""


class NotFoundError(ServiceError):
    """An unknown model or version."""


class TooSlowError(ServiceError):
    """The request body did not arrive in time."""


class TooLargeError(ServiceError):
    """Over a limit: body, tensor elements, FLOPs or working memory."""


class UnsupportedMediaTypeError(ServiceError):
    """A body declared as something the route does not read."""


class OverloadedError(ServiceError):
    """Every computation slot is busy, or the admission queue is full."""


class InternalError(ServiceError):
    """A fault of the server's own (logged); never caused by any input."""


#: Each domain exception's HTTP status and gRPC status code name.
STATUS: dict[type[ServiceError], tuple[int, str]] = {
    BadRequestError: (400, "INVALID_ARGUMENT"),
    UnauthenticatedError: (401, "UNAUTHENTICATED"),
    PermissionDeniedError: (403, "PERMISSION_DENIED"),
    NotFoundError: (404, "NOT_FOUND"),
    TooSlowError: (408, "DEADLINE_EXCEEDED"),
    TooLargeError: (413, "RESOURCE_EXHAUSTED"),
    UnsupportedMediaTypeError: (415, "INVALID_ARGUMENT"),
    InvalidError: (422, "INVALID_ARGUMENT"),
    InternalError: (500, "INTERNAL"),
    OverloadedError: (503, "UNAVAILABLE"),
}

_BY_HTTP = {http: kind for kind, (http, _) in STATUS.items()}


def status_of(exc: ServiceError) -> tuple[int, str]:
    """The (HTTP status, gRPC code name) of ``exc``: its nearest class in :data:`STATUS`."""
    for kind in type(exc).__mro__:
        if kind in STATUS:
            return STATUS[kind]
    return STATUS[InternalError]


def error_for_status(
    status: int,
    detail: str,
    errors: Iterable[tuple[Loc, str]] = (),
    headers: Mapping[str, str] | None = None,
) -> ServiceError:
    """The domain exception for an HTTP status (a 500 for one the table lacks)."""
    return _BY_HTTP.get(status, InternalError)(detail, errors, headers)


def bad_request(msg: str, loc: Loc = ()) -> BadRequestError:
    """A :class:`BadRequestError` naming one field."""
    return BadRequestError(msg, [(loc, msg)])


def loc_text(loc: Loc) -> str:
    """A loc as ``a.b.0``, each client-given key clipped to 60 characters."""
    return ".".join(str(p) if isinstance(p, int) or len(p) <= 60 else p[:57] + "..." for p in loc)


def invalid(loc: Loc, msg: str) -> InvalidError:
    """A 422 :class:`InvalidError` for a single field."""
    return InvalidError(f"{loc_text(loc)}: {msg}" if loc else msg, [(loc, msg)])


def from_cnn_error(exc: CnnError, prefix: Loc = ()) -> InvalidError:
    """A core error as a 422 whose ``loc`` is ``prefix + [exc.arg]``."""
    loc = [*prefix, exc.arg] if exc.arg else list(prefix)
    return invalid(loc, exc.message)
