"""cnn-service: the HTTP API over :mod:`cnncore`."""

__version__ = "0.1.0"
