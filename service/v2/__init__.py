"""The Open Inference Protocol (KServe V2 REST) over the model repository.

- :mod:`service.v2.binary`: how a body becomes arrays and arrays a body (Triton's
  binary tensor data extension, every size checked against the body first);
- :mod:`service.v2.protocol`: requests mapped onto a model (inputs, upstream signals,
  outputs, gradients, budgets) and the model metadata;
- :mod:`service.v2.routes`: the thin routes;
- :mod:`service.v2.openapi`: how the routes are documented (never used to parse).
"""
