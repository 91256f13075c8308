# syntax=docker/dockerfile:1
# leakhunter scoring images: `leak serve` (HTTP) and `leak predict` (batch) on .onnx models. No torch, exactly
# one onnxruntime build per image, the pinned closure from requirements/ (regenerate: requirements/regenerate.sh).
#
#   docker build --target cpu -t leakhunter:cpu .
#   docker build --target gpu -t leakhunter:gpu .
#   docker run --rm -p 8000:8000 -v /srv/models:/models:ro leakhunter:cpu serve --model /models/leak.onnx
#   docker run --rm -v /srv/models:/models:ro -v /srv/night:/data:ro -v /srv/out:/out leakhunter:cpu \
#       predict /data --model /models/leak.onnx --out /out/scores.csv
#   docker run --rm --gpus all -p 8000:8000 -v /srv/models:/models:ro leakhunter:gpu \
#       serve --model /models/leak.onnx --device cuda
#
# Models come in on a read-only volume at /models: never copied into an image, never downloaded.
# Processes run as uid:gid 10001:10001; a folder mounted for output (/out) must be writable by that uid.
# HEALTHCHECK: `python -m leakhunter.healthcheck` asks `leak serve` for /readyz on its --port (stdlib only, no
# curl/wget); a container running `leak predict` reports healthy (nothing to probe).
#
# GPU host requirements (target gpu): onnxruntime-gpu 1.31.1 is built against CUDA 13.0 and cuDNN 9, so the
# base is CUDA 13.0 + cuDNN 9 and the host needs an NVIDIA driver of branch R580 or newer (>= 580.65.06, the
# CUDA 13.0 minimum; `nvidia-smi` must say "CUDA Version: 13.0" or higher), the NVIDIA Container Toolkit, and a
# GPU of compute capability 7.5 or newer (Turing and later: CUDA 13 dropped Maxwell, Pascal and Volta).
# Without a usable GPU, `--device auto` scores on the CPU and `--device cuda` stops with one message.

# ---------------------------------------------------------------------------------------------------- cpu
FROM python:3.11.16-slim-bookworm AS cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LEAK_SERVE_HOST=0.0.0.0 \
    LEAK_SERVE_PORT=8000

RUN groupadd --gid 10001 leak \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/leak --shell /usr/sbin/nologin leak

# Dependencies first (their layer survives source edits), then the source, installed without dependencies.
COPY requirements/cpu.txt /opt/leakhunter/requirements.txt
RUN pip install --no-cache-dir -r /opt/leakhunter/requirements.txt
COPY pyproject.toml README.md /opt/leakhunter/src/
COPY leakhunter /opt/leakhunter/src/leakhunter
COPY training /opt/leakhunter/src/training
COPY inference /opt/leakhunter/src/inference
COPY export /opt/leakhunter/src/export
RUN pip install --no-cache-dir --no-deps /opt/leakhunter/src && rm -rf /opt/leakhunter/src

USER 10001:10001
WORKDIR /home/leak
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 CMD ["python", "-m", "leakhunter.healthcheck"]
ENTRYPOINT ["leak"]
CMD ["--help"]

# ---------------------------------------------------------------------------------------------------- gpu
FROM nvidia/cuda:13.0.2-cudnn-runtime-ubuntu22.04 AS gpu

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    LEAK_SERVE_HOST=0.0.0.0 \
    LEAK_SERVE_PORT=8000

# Python 3.11 from Ubuntu 22.04's own archive (universe), in a venv at /opt/venv that is first on PATH.
# Not version-pinned: the archive keeps only the current build of a package, so an `=version` pin breaks the
# build at the next security update; the pinned base tag and requirements/gpu.txt are what make it repeatable.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv \
    && groupadd --gid 10001 leak \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/leak --shell /usr/sbin/nologin leak

COPY requirements/gpu.txt /opt/leakhunter/requirements.txt
RUN pip install --no-cache-dir -r /opt/leakhunter/requirements.txt
COPY pyproject.toml README.md /opt/leakhunter/src/
COPY leakhunter /opt/leakhunter/src/leakhunter
COPY training /opt/leakhunter/src/training
COPY inference /opt/leakhunter/src/inference
COPY export /opt/leakhunter/src/export
RUN pip install --no-cache-dir --no-deps /opt/leakhunter/src && rm -rf /opt/leakhunter/src

USER 10001:10001
WORKDIR /home/leak
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 CMD ["python", "-m", "leakhunter.healthcheck"]
ENTRYPOINT ["leak"]
CMD ["--help"]
