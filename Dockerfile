# cnn-service: the REST and gRPC APIs over cnncore.
#   docker build -t cnn-service . && docker run --rm -p 8000:8000 -p 8081:8081 cnn-service
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src

# Dependencies first, in their own layer: a change to the source does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
    && pip install -r requirements.txt

COPY README.md ./
COPY cnncore ./cnncore
COPY service ./service
RUN pip install --no-deps . \
    && groupadd --gid 10001 app \
    && useradd --create-home --uid 10001 --gid 10001 app

USER 10001:10001
WORKDIR /home/app
# HTTP (REST, /v1 and /v2) and gRPC (the Open Inference Protocol).
EXPOSE 8000 8081

HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('CNN_PORT', '8000'), timeout=4)"]

CMD ["cnn-service", "--host", "0.0.0.0"]
