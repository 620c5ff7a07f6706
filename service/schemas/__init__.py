"""The pydantic models of the ``/v1`` API, below the routes and the model repository
(which both import them; neither is imported from here).

- :mod:`service.schemas.base`: shared parameter models, the strict base, tensor requests
  and responses;
- :mod:`service.schemas.layers`: the shape-only layers of ``/v1/shapes``;
- :mod:`service.schemas.network`: the weighted layers and losses of ``/v1/network`` and
  ``model.json``.
"""

from .base import (
    MAX_CHANNELS,
    MAX_KERNEL,
    MAX_PAD,
    Conv2dParams,
    IntOrPair,
    Meta,
    Pool2dParams,
    StrictModel,
    TensorRequest,
    TensorResponse,
)

__all__ = [
    "MAX_CHANNELS",
    "MAX_KERNEL",
    "MAX_PAD",
    "Conv2dParams",
    "IntOrPair",
    "Meta",
    "Pool2dParams",
    "StrictModel",
    "TensorRequest",
    "TensorResponse",
]
