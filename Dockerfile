# cnn-service: the REST and gRPC APIs over cnncore.
#   docker build -t cnn-service . && docker run --rm -p 8000:8000 -p 8081:8081 cnn-service
# BASE names the Python image both stages start from; CI builds this file with buildah on
# a stand-in made from Debian's packages (tests/deploy/test_image.py).
ARG BASE=python:3.11-slim

# Stage 1: the project as a wheel, so its source tree and build files stay out of the image.
FROM ${BASE} AS wheel
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cnncore ./cnncore
COPY service ./service
RUN pip wheel --no-deps --wheel-dir /wheels .

# Stage 2: what runs.
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /tmp/build

# Dependencies first, in their own layer: a change to the source does not reinstall them.
# With the onnxruntime extra (plain inference of ONNX models runs on it, CNN_ONNX_RUNTIME).
# What the service never imports is dropped: numpy's test suites, onnx's backend test cases
# and onnxruntime's offline tools (transformer optimisers, quantisation): about 42 MB.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['onnxruntime']))" > requirements.txt \
    && pip install -r requirements.txt \
    && python -c "import pathlib, shutil, numpy, onnx, onnxruntime; root = lambda m: pathlib.Path(m.__file__).parent; [shutil.rmtree(p) for p in [*root(numpy).glob('**/tests'), root(onnx) / 'backend' / 'test', *(root(onnxruntime) / d for d in ('transformers', 'quantization', 'tools'))]]" \
    && rm -rf /tmp/build

COPY --from=wheel /wheels /tmp/wheels
RUN pip install --no-deps /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels \
    && groupadd --gid 10001 app \
    && useradd --create-home --uid 10001 --gid 10001 app

USER 10001:10001
WORKDIR /home/app
# HTTP (REST, /v1 and /v2) and gRPC (the Open Inference Protocol).
EXPOSE 8000 8081

HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('CNN_PORT', '8000'), timeout=4)"]

CMD ["cnn-service", "--host", "0.0.0.0"]
