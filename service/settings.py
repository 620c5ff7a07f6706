"""Service configuration: every setting is an environment variable with the ``CNN_`` prefix."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""Directory prometheus-client shares between worker processes; read when it is imported,
so the CLI sets it before any worker imports :mod:`service.metrics`."""

MiB = 1024 * 1024
GiB = 1024 * MiB


class Settings(BaseSettings):
    """Limits and server options, read from ``CNN_*`` environment variables.

    Every limit has a safe default for a 2-core, 24 GiB machine and is shown by
    ``GET /v1/info``.
    """

    model_config = SettingsConfigDict(env_prefix="CNN_", frozen=True, extra="ignore")

    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port.")
    workers: int = Field(1, ge=1, le=64, description="Worker processes.")
    log_level: str = Field("info", description="uvicorn log level.")

    max_body_bytes: int = Field(
        64 * MiB, ge=1, description="Largest request body accepted, counted as received (413)."
    )
    max_elements: int = Field(16_777_216, ge=1, description="Most elements in one tensor (413).")
    max_flops: float = Field(
        2e10, gt=0, description="Most floating point operations one request may ask for (413)."
    )
    max_request_bytes: int = Field(
        4 * GiB,
        ge=1,
        description="Most working memory (inputs, buffers, outputs) one request may need (413).",
    )
    max_concurrency: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=1,
        description="Computations running at once; further requests wait for a slot.",
    )
    max_queue: int | None = Field(
        None,
        ge=0,
        description="Computing requests admitted beyond the running ones (uploading, parsing "
        "or waiting for a slot); any more get an immediate 503 before their body is read. "
        "Default: 4 × CNN_MAX_CONCURRENCY.",
    )
    queue_timeout: float = Field(
        2.0, ge=0, description="Seconds a request waits for a computation slot before a 503."
    )
    retry_after: int = Field(1, ge=1, description="Seconds sent in Retry-After with a 503.")
    body_timeout: float = Field(
        30.0, gt=0, description="Seconds allowed to receive a whole request body (408)."
    )
    graceful_timeout: float = Field(
        20.0, gt=0, description="Seconds in-flight requests get to finish after SIGTERM."
    )
    shutdown_delay: float = Field(
        0.0,
        ge=0,
        le=300,
        description="Seconds between SIGTERM and closing the listener, during which "
        "/health/ready answers 503 while requests are still served (lets load balancers "
        "stop routing here first).",
    )
    api_keys: SecretStr | None = Field(
        None,
        description="Comma-separated API keys; when set (or api_keys_file), every route but "
        "the probes, /metrics and the docs needs 'Authorization: Bearer <key>' (401).",
    )
    api_keys_file: Path | None = Field(
        None,
        description="File holding API keys, one a line (a mounted secret); '#' lines skipped. "
        "Combined with api_keys. An unreadable or empty file stops the service from starting.",
    )

    model_repository: Path | None = Field(
        None,
        description="Model repository folder, one sub-folder a model (default: the bundled "
        "service/default_models).",
    )
    max_model_bytes: int = Field(
        2 * GiB, ge=1, description="Most bytes the loaded models may hold together."
    )
    strict_readiness: bool = Field(
        False, description="/v2/health/ready only while every model in the repository is READY."
    )
    model_name: str | None = Field(
        None,
        description="KServe's single-model layout (the CLI's --model_name): the repository "
        "folder itself holds one model's files (model.json or model.onnx), served under "
        "this name; nothing else is scanned.",
    )
    model_control_mode: Literal["none", "explicit"] = Field(
        "none",
        description="Triton's --model-control-mode: 'none' reads the repository at start-up "
        "and refuses load and unload (403); 'explicit' allows them (with API keys "
        "configured, only with a key).",
    )

    @property
    def queue_size(self) -> int:
        """``max_queue``, or its default of 4 × ``max_concurrency``."""
        return 4 * self.max_concurrency if self.max_queue is None else self.max_queue

    def limits(self) -> dict[str, float | int]:
        """The limits in force, as ``/v1/info`` reports them."""
        return {
            "max_body_bytes": self.max_body_bytes,
            "max_elements": self.max_elements,
            "max_flops": self.max_flops,
            "max_request_bytes": self.max_request_bytes,
            "max_concurrency": self.max_concurrency,
            "max_queue": self.queue_size,
            "queue_timeout": self.queue_timeout,
            "body_timeout": self.body_timeout,
            "max_model_bytes": self.max_model_bytes,
        }
