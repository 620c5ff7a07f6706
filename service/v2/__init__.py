"""The Open Inference Protocol's REST transport (KServe V2) over the dataplane.

- :mod:`service.v2.routes`: the thin routes (framing: :mod:`service.wire.v2`; the
  protocol mapped onto a model: :mod:`service.dataplane`);
- :mod:`service.v2.openapi`: how the routes are documented (never used to parse).
"""
