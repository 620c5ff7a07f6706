"""Bytes or JSON <-> ndarray, for every transport; no web framework, no status codes.

- :mod:`service.wire.datatypes`: the one datatype table (V2 names, numpy, ``/v1`` names);
- :mod:`service.wire.checks`: the checks every framing shares;
- :mod:`service.wire.infer`: an inference request and response as values, and
  :func:`~service.wire.infer.decode_input`, the one decoder of an input;
- :mod:`service.wire.v1`: the ``/v1`` tensor forms;
- :mod:`service.wire.v2`: the V2 REST framing (Triton's binary tensor data extension).
"""
