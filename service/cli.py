"""``cnn-service`` and ``python -m service``: run the API under uvicorn.

Flags default to the ``CNN_HOST``, ``CNN_PORT``, ``CNN_WORKERS`` and ``CNN_LOG_LEVEL``
environment variables (see :class:`service.settings.Settings`). Every worker
builds its own app through the factory ``service.app:create_app``.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence

from pydantic import ValidationError

from . import __version__
from .runtime import quiet_blas_threads
from .settings import MULTIPROC_ENV, Settings

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
MODEL_REPOSITORY_ENV = "CNN_MODEL_REPOSITORY"
MODEL_NAME_ENV = "CNN_MODEL_NAME"
MODEL_CONTROL_ENV = "CNN_MODEL_CONTROL_MODE"
MODEL_CONTROL_MODES = ("none", "explicit")


def _boolean(text: str) -> bool:
    """``true``/``false`` (also ``1``/``0``, ``yes``/``no``), as the environment takes them."""
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_args(argv: Sequence[str] | None, settings: Settings) -> argparse.Namespace:
    """Command-line flags, with defaults taken from ``settings``."""
    parser = argparse.ArgumentParser(
        prog="cnn-service",
        description="Serve convolution, pooling and fully connected layers over HTTP. "
        "Limits are set with CNN_* environment variables (see GET /v1/info).",
    )
    parser.add_argument(
        "--host", default=settings.host, help="address to listen on (CNN_HOST; %(default)s)"
    )
    parser.add_argument(
        "--port",
        "--http_port",  # KServe's spelling
        type=int,
        default=settings.port,
        help="TCP port (CNN_PORT; %(default)s)",
    )
    parser.add_argument(
        "--grpc-port",
        "--grpc_port",  # KServe's spelling
        type=int,
        default=settings.grpc_port,
        help="gRPC port of the Open Inference Protocol (CNN_GRPC_PORT; %(default)s)",
    )
    parser.add_argument(
        "--enable-grpc",
        type=_boolean,
        default=settings.enable_grpc,
        metavar="true|false",
        help="serve gRPC beside HTTP (CNN_ENABLE_GRPC; %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=settings.workers,
        help="worker processes (CNN_WORKERS; %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default=settings.log_level.lower(),
        help="uvicorn log level (CNN_LOG_LEVEL; %(default)s)",
    )
    kserve = parser.add_argument_group(
        "KServe runtime arguments",
        "As a KServe ServingRuntime passes them: serve the one model whose files "
        "(model.json or model.onnx) are directly in --model_dir, named --model_name. "
        "Both or neither.",
    )
    kserve.add_argument("--model_name", metavar="NAME", help="the model's name (CNN_MODEL_NAME)")
    kserve.add_argument(
        "--model_dir",
        metavar="DIR",
        help="the model's folder, e.g. /mnt/models (becomes CNN_MODEL_REPOSITORY)",
    )
    parser.add_argument(
        "--model-repository",
        metavar="DIR",
        help="model repository folder, one sub-folder a model (CNN_MODEL_REPOSITORY; "
        "default: the bundled models). Check one first with: cnn-service models "
        "--model-repository DIR",
    )
    parser.add_argument(
        "--model-control-mode",
        "--model_control_mode",  # Triton's and KServe's spelling
        choices=MODEL_CONTROL_MODES,
        default=settings.model_control_mode,
        help="Triton's model control: 'none' refuses load and unload requests, 'explicit' "
        "allows them (CNN_MODEL_CONTROL_MODE; %(default)s)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    args = parser.parse_args(argv)
    if args.model_repository is not None:
        if args.model_dir is not None:
            parser.error("--model-repository and --model_dir exclude each other")
        if not os.path.isdir(args.model_repository):
            parser.error(f"--model-repository {args.model_repository!r} is not a directory")
    if (args.model_name is None) != (args.model_dir is None):
        parser.error("--model_name and --model_dir go together (KServe passes both)")
    if args.model_dir is not None and not os.path.isdir(args.model_dir):
        parser.error(f"--model_dir {args.model_dir!r} is not a directory")
    if args.model_name is not None:
        from .models.repository import ModelNameError, check_name

        try:
            check_name(args.model_name)
        except ModelNameError as exc:
            parser.error(f"--model_name: {exc}")
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be between 0 and 65535, got {args.port}")
    if not 0 <= args.grpc_port <= 65535:
        parser.error(f"--grpc-port must be between 0 and 65535, got {args.grpc_port}")
    if args.enable_grpc and args.grpc_port == args.port and args.port != 0:
        parser.error(f"--grpc-port and --port are both {args.port}; give gRPC its own port")
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    if args.log_level not in LOG_LEVELS:  # a default from CNN_LOG_LEVEL skips `choices`
        parser.error(f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {args.log_level!r}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until interrupted; returns the process exit status."""
    quiet_blas_threads()  # before anything imports numpy (and so loads OpenBLAS)
    if os.environ.get(MULTIPROC_ENV) == "":
        # prometheus-client takes a set-but-empty directory for the working directory and
        # would write its *.db files there: empty means unset.
        del os.environ[MULTIPROC_ENV]
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"cnn-service: invalid CNN_* environment variable:\n{exc}", file=sys.stderr)
        return 2
    from .models.onnx_runtime import ONNXRUNTIME, installed

    if settings.onnx_runtime == ONNXRUNTIME and not installed():
        print(
            "cnn-service: CNN_ONNX_RUNTIME=onnxruntime, but onnxruntime is not installed "
            "(pip install 'cnn-service[onnxruntime]')",
            file=sys.stderr,
        )
        return 2
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "models":
        return models_main(argv[1:], settings)
    args = parse_args(argv, settings)

    if args.model_repository is not None:
        os.environ[MODEL_REPOSITORY_ENV] = os.path.abspath(args.model_repository)
    # Every worker builds its app (and its gRPC server) from the environment.
    os.environ[MODEL_CONTROL_ENV] = args.model_control_mode
    os.environ["CNN_HOST"] = args.host
    os.environ["CNN_GRPC_PORT"] = str(args.grpc_port)
    os.environ["CNN_ENABLE_GRPC"] = "true" if args.enable_grpc else "false"
    if args.model_name is not None:
        # Every worker builds its app from the environment: KServe's single model goes there.
        os.environ[MODEL_REPOSITORY_ENV] = os.path.abspath(args.model_dir)
        os.environ[MODEL_NAME_ENV] = args.model_name

    # A bad key or key file stops the start here, not in each worker. Checked before
    # MULTIPROC_ENV is set: service.auth imports the metrics, which in this supervisor must
    # stay single-process (workers are spawned afresh and import them again).
    from .auth import ApiKeyError, load_keys

    try:
        load_keys(settings)
    except ApiKeyError as exc:
        print(f"cnn-service: {exc}", file=sys.stderr)
        return 2

    import uvicorn

    metrics_dir = None
    if args.workers > 1 and not os.environ.get(MULTIPROC_ENV):
        # Workers are separate processes: they share metrics through files in a fresh
        # directory, which must be set before any of them imports prometheus-client.
        metrics_dir = tempfile.mkdtemp(prefix="cnn-service-metrics-")
        os.environ[MULTIPROC_ENV] = metrics_dir
    try:
        uvicorn.run(
            "service.app:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level=args.log_level,
            timeout_graceful_shutdown=math.ceil(settings.graceful_timeout),
        )
    finally:
        if metrics_dir is not None:
            del os.environ[MULTIPROC_ENV]
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def models_main(argv: Sequence[str], settings: Settings) -> int:
    """``cnn-service models [--model-repository DIR]``: load every model of the repository
    as the server would, print the index, and exit 1 when any model is unavailable (so a
    repository can be checked before it is deployed)."""
    parser = argparse.ArgumentParser(
        prog="cnn-service models",
        description="Load the model repository as the server would and print each model's "
        "state; exit status 1 when any model is UNAVAILABLE.",
    )
    parser.add_argument(
        "--model-repository",
        metavar="DIR",
        default=settings.model_repository,
        help="the repository folder (CNN_MODEL_REPOSITORY; default: the bundled models)",
    )
    args = parser.parse_args(argv)
    from .app import open_repository

    try:
        repo = open_repository(
            settings.model_copy(update={"model_repository": args.model_repository})
        )
    except FileNotFoundError as exc:
        print(f"cnn-service models: {exc}", file=sys.stderr)
        return 2
    entries = repo.index()
    print(f"model repository {repo.root}: {len(entries)} model(s)")
    for e in entries:
        print(f"{e.name}  {e.platform or '-'}  {e.state.value}")
        if e.model is not None:
            ops = ", ".join(f"{op} {n}" for op, n in sorted(e.model.op_counts.items()))
            print(f"    {ops}; {e.model.nbytes} bytes of parameters")
        else:
            print(f"    {e.reason}")
    return 1 if any(e.model is None for e in entries) else 0
