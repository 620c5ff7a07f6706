"""cnncore: convolution, pooling and fully connected layers in numpy, forward and backward.

Every operation is a stateless pair ``forward(...) -> (out, cache)`` and
``backward(dout, cache) -> grads``. Layouts: conv input ``(N, C, H, W)``, conv
weight ``(F, C // groups, KH, KW)``, linear input ``(N, D1, ..., Dk)`` with weight
``(D, M)``. Plain-loop twins that read like the tutorial live in
:mod:`cnncore.reference`; shape arithmetic lives in :mod:`cnncore.geometry`.
"""

from .activations import relu_backward, relu_forward
from .conv import (
    ConvLimits,
    ConvPath,
    ConvPlan,
    DxPath,
    conv2d_backward,
    conv2d_forward,
    conv2d_plan,
)
from .errors import CnnError, DtypeError, ParameterError, ShapeError
from .geometry import (
    LayerInfo,
    conv2d_geometry,
    elementwise_info,
    flatten_info,
    linear_info,
    pool2d_geometry,
)
from .graph import Graph, GraphError, Node
from .linear import linear_backward, linear_forward
from .losses import log_softmax, mse_loss, softmax_cross_entropy
from .network import (
    Conv2d,
    Linear,
    MeanSquaredError,
    SoftmaxCrossEntropy,
    network_backward,
    network_forward,
    network_graph,
    network_info,
    network_loss,
)
from .network_shapes import LayerError
from .onnx import load_onnx
from .pool import pool2d_backward, pool2d_forward

__version__ = "0.1.0"

__all__ = [
    "CnnError",
    "Conv2d",
    "ConvLimits",
    "ConvPath",
    "ConvPlan",
    "DtypeError",
    "DxPath",
    "Graph",
    "GraphError",
    "LayerError",
    "LayerInfo",
    "Linear",
    "MeanSquaredError",
    "Node",
    "ParameterError",
    "ShapeError",
    "SoftmaxCrossEntropy",
    "__version__",
    "conv2d_backward",
    "conv2d_forward",
    "conv2d_geometry",
    "conv2d_plan",
    "elementwise_info",
    "flatten_info",
    "linear_backward",
    "linear_forward",
    "linear_info",
    "load_onnx",
    "log_softmax",
    "mse_loss",
    "network_backward",
    "network_forward",
    "network_graph",
    "network_info",
    "network_loss",
    "pool2d_backward",
    "pool2d_forward",
    "pool2d_geometry",
    "relu_backward",
    "relu_forward",
    "softmax_cross_entropy",
]
