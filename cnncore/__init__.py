"""cnncore: convolution, pooling and fully connected layers in numpy, forward and backward.

Every operation is a stateless pair ``forward(...) -> (out, cache)`` and
``backward(dout, cache) -> grads``. Layouts: conv input ``(N, C, H, W)``, conv
weight ``(F, C // groups, KH, KW)``, linear input ``(N, D1, ..., Dk)`` with weight
``(D, M)``. Plain-loop twins that read like the tutorial live in
:mod:`cnncore.reference`; shape arithmetic lives in :mod:`cnncore.geometry`.
"""

from .activations import relu_backward, relu_forward
from .conv import conv2d_backward, conv2d_forward
from .errors import CnnError, DtypeError, ParameterError, ShapeError
from .geometry import (
    LayerInfo,
    conv2d_geometry,
    elementwise_info,
    flatten_info,
    linear_info,
    pool2d_geometry,
)
from .linear import linear_backward, linear_forward
from .losses import softmax_cross_entropy
from .pool import pool2d_backward, pool2d_forward

__version__ = "0.1.0"

__all__ = [
    "CnnError",
    "DtypeError",
    "LayerInfo",
    "ParameterError",
    "ShapeError",
    "__version__",
    "conv2d_backward",
    "conv2d_forward",
    "conv2d_geometry",
    "elementwise_info",
    "flatten_info",
    "linear_backward",
    "linear_forward",
    "linear_info",
    "pool2d_backward",
    "pool2d_forward",
    "pool2d_geometry",
    "relu_backward",
    "relu_forward",
    "softmax_cross_entropy",
]
