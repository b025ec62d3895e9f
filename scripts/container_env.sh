#!/usr/bin/env bash
# The container's Python environment, exactly as uv.lock holds it: the service with the `step-audio` extra (which
# brings `gpu`: CUDA torch 2.8.0, transformers 4.53.3, bitsandbytes), without the CPU `onnxruntime` that piper-tts
# asks for, because `onnxruntime-gpu` provides the same module (docs/deployment.md, "Pins and traps").
# The Dockerfile builds /opt/venv with it; `make container-env` builds .venv-container, where the tests of the real
# Step-Audio-EditX code run (tests/engines/test_step_audio_checkout.py).
#   scripts/container_env.sh [more uv sync options]     (UV: the uv to use; UV_PROJECT_ENVIRONMENT: the folder)
set -euo pipefail
exec "${UV:-uv}" sync --locked --extra step-audio --no-install-package onnxruntime --compile-bytecode "$@"
