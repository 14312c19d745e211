# Trunkline server image. CPU by default; `--build-arg VARIANT=gpu` (with a CUDA runtime
# BASE_IMAGE) swaps in onnxruntime-gpu. `--build-arg WHEELHOUSE=wheels` installs from a
# local wheelhouse (a directory of wheels in the build context) instead of the index.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG VARIANT=cpu
ARG WHEELHOUSE=
WORKDIR /src
COPY pyproject.toml README.md ./
COPY server server
COPY models models
COPY routing routing
COPY clients clients
COPY ${WHEELHOUSE:-pyproject.toml} /wheels/
RUN python -m venv /opt/trunkline \
    && PIP="/opt/trunkline/bin/pip install --no-cache-dir" \
    && if [ -n "${WHEELHOUSE}" ]; then PIP="$PIP --no-index --find-links /wheels"; \
       else PIP="$PIP --extra-index-url https://download.pytorch.org/whl/cpu"; fi \
    && $PIP torch==2.13.0 \
    && $PIP . \
    && if [ "${VARIANT}" = "gpu" ]; then /opt/trunkline/bin/pip uninstall -y onnxruntime && $PIP onnxruntime-gpu; fi

FROM ${BASE_IMAGE}
RUN groupadd --system trunkline && useradd --system --gid trunkline --home-dir /home/trunkline --create-home trunkline
COPY --from=build /opt/trunkline /opt/trunkline
ENV PATH=/opt/trunkline/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TRUNKLINE_HOST=0.0.0.0 \
    TRUNKLINE_PORT=8000 \
    TRUNKLINE_ONNX_DIR=/home/trunkline/.cache/trunkline/onnx
USER trunkline
WORKDIR /home/trunkline
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ['TRUNKLINE_PORT']}/v2/health/ready\", timeout=2)"]
STOPSIGNAL SIGTERM
CMD ["trunkline", "serve"]
