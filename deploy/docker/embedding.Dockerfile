# syntax=docker/dockerfile:1.7
# Sekha Embedding service image. Build from the repository root:
#
#   docker build -f deploy/docker/embedding.Dockerfile -t sekha/embedding:dev .
#
# The service gets every vector from the Router's Embed RPC, so it needs no model of its own
# (the in-process model is a router option: see WITH_LOCAL_MODEL in router.Dockerfile).

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
# Compilers live only in this stage, for any dependency without a wheel for this platform.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY clients/python/ clients/python/
COPY sekha_runtime/ sekha_runtime/
COPY router_service/ router_service/
COPY embedding_service/ embedding_service/
# A non-editable install puts the application itself into the venv, so the runtime stage
# needs nothing from /src.
# hadolint ignore=DL3013
RUN --mount=type=cache,target=/root/.cache/pip pip install ./clients/python .

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 sekha \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin sekha \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/sekha
COPY --from=build /opt/venv /opt/venv
COPY deploy/docker/healthcheck.py /opt/sekha/healthcheck.py
COPY deploy/config/ /etc/sekha/
# The container listens on every interface whatever the config file says; Chroma's
# client must not phone home.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SEKHA_EMBEDDING__SERVER__HOST=0.0.0.0 \
    SEKHA_HEALTHCHECK_TARGET=127.0.0.1:50052 \
    ANONYMIZED_TELEMETRY=False
# The SQLite state file and an embedded Chroma live here; mount a persistent volume.
WORKDIR /var/lib/sekha
VOLUME ["/var/lib/sekha"]
USER 10001:10001
# 50052 gRPC, 9465 Prometheus metrics (server.metrics_port in the deploy configs).
EXPOSE 50052 9465
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "/opt/sekha/healthcheck.py"]
ENTRYPOINT ["sekha-embedding"]
CMD ["--config", "/etc/sekha/embedding.compose.yaml"]
