"""The Open Inference Protocol over gRPC (contract §5): ``inference.proto``, its generated
modules (``generate.py``), and the servicers over the dataplane (``server.py``)."""
