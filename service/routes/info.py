"""GET /v1/info: what is running here, and the limits in force."""

from __future__ import annotations

import functools
import os
import platform
from typing import Any

import numpy as np
from fastapi import Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from .. import __version__
from ..routing import JSONResponse, make_router, settings_of

router = make_router(prefix="/v1", tags=["operations"])


class Info(BaseModel):
    """Versions, the BLAS numpy calls, and the limits this instance enforces."""

    service: str = Field(description="Service name.")
    version: str = Field(description="Service version.")
    python: str = Field(description="Python version.")
    numpy: str = Field(description="numpy version.")
    blas: list[dict[str, Any]] = Field(
        description="BLAS libraries numpy uses (name, version, threads when known)."
    )
    limits: dict[str, float | int] = Field(
        description="Limits in force (set with CNN_* environment variables)."
    )
    pid: int = Field(description="Process id of the worker that answered.")
    models: list[dict[str, Any]] = Field(
        description="The model repository's models: name, version, platform, state, reason."
    )


@functools.cache
def blas_info() -> tuple[dict[str, Any], ...]:
    """The BLAS in use: from threadpoolctl when installed (what is loaded, with thread
    counts), else from numpy's build configuration. Computed once per process."""
    try:
        from threadpoolctl import threadpool_info  # type: ignore[import-untyped]
    except ImportError:
        try:
            blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        except (TypeError, KeyError):  # numpy < 1.26 has no mode="dicts"
            return ()
        return ({"name": blas.get("name"), "version": blas.get("version"), "source": "build"},)
    keys = ("internal_api", "version", "num_threads", "threading_layer", "architecture")
    return tuple(
        {"name": lib["internal_api"], **{k: lib.get(k) for k in keys[1:]}, "source": "loaded"}
        for lib in threadpool_info()
        if lib.get("user_api") == "blas"
    )


@router.get("/info", response_model=Info, summary="Versions and limits")
async def info(request: Request) -> Response:
    """Service, Python and numpy versions, the BLAS in use and the limits in force."""
    return JSONResponse(
        {
            "service": "cnn-service",
            "version": __version__,
            "python": platform.python_version(),
            "numpy": np.__version__,
            "blas": list(blas_info()),
            "limits": settings_of(request).limits(),
            "pid": os.getpid(),
            "models": [
                {**e.as_index(), "platform": e.platform} for e in request.app.state.models.index()
            ],
        }
    )
