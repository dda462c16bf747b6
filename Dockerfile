# syntax=docker/dockerfile:1
# runbot container image: build the wheel in one stage, install it into a slim Python in the next.
# The final image has no compilers and no build tools; it runs as a numeric non-root uid and works with a
# read-only root filesystem (mount /data and /tmp as volumes). See docs/deploy.md.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md ./
COPY src ./src
# the wheel and every dependency as wheels, so the final stage installs offline from /wheels
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && pip wheel --wheel-dir /wheels /wheels/runbot-*.whl

FROM ${PYTHON_IMAGE}
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=""
LABEL org.opencontainers.image.title="runbot" \
      org.opencontainers.image.description="Incident-response runbook automation: Alertmanager in, guarded remediations behind Slack approvals, Vault secrets, tamper-evident audit out." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.vendor="runbot" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels "runbot==${VERSION}" \
 && mkdir -p /data /runbooks \
 && chown 10001:10001 /data

COPY runbooks /runbooks

# the environment the entrypoint contract test (tests/deploy/test_image_entrypoint.py) runs the command with
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    TMPDIR=/tmp \
    RUNBOT_HOST=0.0.0.0 \
    RUNBOT_PORT=8080 \
    RUNBOT_DATA_DIR=/data \
    RUNBOT_RUNBOOKS_DIR=/runbooks \
    RUNBOT_LOG_FORMAT=json

USER 10001:10001
WORKDIR /data
VOLUME ["/data", "/tmp"]
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status != 200)"]
ENTRYPOINT ["runbot"]
CMD ["serve"]
