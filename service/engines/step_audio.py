"""Step-Audio-EditX: voice cloning and audio editing, driving the classes of the user's own upstream checkout.

The checkout's folder goes on `sys.path` inside the worker only; nothing of the upstream code is copied here.
Facts used (signatures, folder names, vocabularies) are listed in docs/step-audio.md.
"""

from __future__ import annotations

import importlib
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

from service.engines.base import (
    AudioChunk,
    AudioClip,
    Capabilities,
    EditRequest,
    EngineInputError,
    GpuMemory,
    SynthesisRequest,
)

SAMPLE_RATE = 24000
MIN_INPUT_RATE = 16000

EMOTIONS = (
    "happy",
    "angry",
    "sad",
    "humour",
    "confusion",
    "disgusted",
    "empathy",
    "embarrass",
    "fear",
    "surprised",
    "excited",
    "depressed",
    "coldness",
    "admiration",
    "remove",
)
STYLES = (
    "serious",
    "arrogant",
    "child",
    "older",
    "girl",
    "pure",
    "sister",
    "sweet",
    "ethereal",
    "whisper",
    "gentle",
    "recite",
    "generous",
    "act_coy",
    "warm",
    "shy",
    "comfort",
    "authority",
    "chat",
    "radio",
    "soulful",
    "story",
    "vivid",
    "program",
    "news",
    "advertising",
    "roar",
    "murmur",
    "shout",
    "deeply",
    "loudly",
    "remove",
    "exaggerated",
)
SPEEDS = ("faster", "slower", "more faster", "more slower")
PARALINGUISTIC_TAGS = (
    "[Breathing]",
    "[Laughter]",
    "[Surprise-oh]",
    "[Confirmation-en]",
    "[Uhm]",
    "[Surprise-ah]",
    "[Surprise-wa]",
    "[Sigh]",
    "[Question-ei]",
    "[Dissatisfaction-hnn]",
)
LANGUAGE_TAGS = ("[Sichuanese]", "[Cantonese]", "[Japanese]", "[Korean]")
EDIT_OPTIONS: dict[str, tuple[str, ...]] = {
    "emotion": EMOTIONS,
    "style": STYLES,
    "speed": SPEEDS,
    "paralinguistic": (),
    "denoise": (),
    "vad": (),
}

VARIANT_FOLDERS = {"base": "Step-Audio-EditX", "bnb": "Step-Audio-EditX-bnb-4bit", "awq": "Step-Audio-EditX-AWQ-4bit"}
TOKENIZER_FOLDER = "Step-Audio-Tokenizer"
FUNASR_FOLDER = "dengcunqin/speech_paraformer-large_asr_nat-zh-cantonese-en-16k-vocab8501-online"
VOCODER_FILES = ("cosyvoice.yaml", "flow.pt", "hift.pt", "campplus.onnx")
QUANTIZATION = {"base": None, "bnb": "int4", "awq": "awq-4bit"}
NEEDS_GPU = "needs an NVIDIA GPU (CUDA): none is visible to the worker (check the container's --gpus and GPU_ID)"


@dataclass(frozen=True)
class VariantCheck:
    """Whether one variant can be served from these folders, and if not, why."""

    variant: str
    model_path: Path
    problems: tuple[str, ...]


def check_variant(project_dir: Path, models_dir: Path, variant: str) -> VariantCheck:
    """Everything the upstream code reads from disk for this variant, checked before anything is loaded."""
    model_path = models_dir / VARIANT_FOLDERS[variant]
    tokenizer_path = models_dir / TOKENIZER_FOLDER
    problems = [
        f"{project_dir / name} is missing" for name in ("tokenizer.py", "tts.py") if not (project_dir / name).is_file()
    ]
    if not model_path.is_dir():
        problems.append(f"{model_path} is missing")
    else:
        if not (model_path / "config.json").is_file():
            problems.append(f"{model_path / 'config.json'} is missing")
        vocoder = model_path / "CosyVoice-300M-25Hz"
        problems += [f"{vocoder / name} is missing" for name in VOCODER_FILES if not (vocoder / name).is_file()]
    if not tokenizer_path.is_dir():
        problems.append(f"{tokenizer_path} is missing")
    else:
        for name in ("linguistic_tokenizer.npy", "speech_tokenizer_v1.onnx", FUNASR_FOLDER):
            if not (tokenizer_path / name).exists():
                problems.append(f"{tokenizer_path / name} is missing (without it the upstream code would download)")
    return VariantCheck(variant, model_path, tuple(problems))


def _to_samples(audio: Any) -> AudioChunk:
    """The upstream's output tensor (batch of one) as a flat float32 array."""
    if hasattr(audio, "detach"):
        audio = audio.detach().float().cpu().numpy()
    return np.asarray(audio, dtype=np.float32).reshape(-1)


class StepAudioEngine:
    """Options: project_dir (the upstream checkout), models_dir, variant (base | bnb | awq), dtype (bfloat16),
    default_voice (a voice library name), require_cuda (true; false only for stand-ins)."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        self._options = dict(options)
        self._variant = str(options["variant"])
        self._tts: Any = None
        self._workdir: tempfile.TemporaryDirectory[str] | None = None

    @classmethod
    def describe(cls, options: Mapping[str, Any]) -> Capabilities:
        if options.get("variant") not in VARIANT_FOLDERS:
            raise ValueError(f"variant must be one of {sorted(VARIANT_FOLDERS)}, got {options.get('variant')!r}")
        return Capabilities(
            sample_rate=SAMPLE_RATE,
            voices=(),
            default_voice=str(options.get("default_voice") or ""),
            device="cuda" if options.get("require_cuda", True) else "cpu",
            modes=("clone",),
            edit_options=EDIT_OPTIONS,
            supports_speed=True,
            supports_instructions=True,
        )

    def load(self) -> None:
        import torch

        if self._options.get("require_cuda", True) and not torch.cuda.is_available():
            raise RuntimeError(NEEDS_GPU)
        project_dir = Path(self._options["project_dir"])
        models_dir = Path(self._options["models_dir"])
        check = check_variant(project_dir, models_dir, self._variant)
        if check.problems:
            raise RuntimeError("; ".join(check.problems))
        sys.path.insert(0, str(project_dir))
        tokenizer_module = importlib.import_module("tokenizer")
        tts_module = importlib.import_module("tts")
        tokenizer = tokenizer_module.StepAudioTokenizer(str(models_dir / TOKENIZER_FOLDER), model_source="local")
        self._tts = tts_module.StepAudioTTS(
            str(check.model_path),
            tokenizer,
            model_source="local",
            quantization_config=QUANTIZATION[self._variant],
            torch_dtype=getattr(torch, str(self._options.get("dtype", "bfloat16"))),
            device_map="cuda",
        )
        self._workdir = tempfile.TemporaryDirectory(prefix="step-audio-")

    def _file(self, clip: AudioClip) -> Path:
        """The upstream reads audio from paths only: write the clip to a WAV file of the worker's own."""
        assert self._workdir is not None
        if clip.sample_rate < MIN_INPUT_RATE:
            raise EngineInputError("audio", f"audio must be at least {MIN_INPUT_RATE} Hz, got {clip.sample_rate}")
        handle, name = tempfile.mkstemp(suffix=".wav", dir=self._workdir.name)
        with open(handle, "wb") as file:
            soundfile.write(file, clip.samples, clip.sample_rate, format="WAV", subtype="PCM_16")
        return Path(name)

    def _call(self, method: str, clip: AudioClip, *args: Any) -> AudioClip:
        path = self._file(clip)
        try:
            audio, rate = getattr(self._tts, method)(str(path), *args)
        except Exception as error:
            if getattr(error, "status_code", None) == 400:
                raise EngineInputError("edit_info", f"the model refused the edit: {error}") from error
            raise
        finally:
            path.unlink(missing_ok=True)
        return AudioClip(_to_samples(audio), int(rate))

    def _edit(self, clip: AudioClip, transcript: str, mode: str, edit_info: str | None, text: str | None) -> AudioClip:
        return self._call("edit", clip, transcript, mode, edit_info, text)

    def synthesize(self, request: SynthesisRequest) -> Iterator[AudioChunk]:
        if request.reference is None:
            raise EngineInputError("voice", "Step-Audio-EditX clones a voice: name a voice that has a reference clip")
        output = self._call("clone", request.reference, request.reference_text or "", request.text)
        for step in request.edits:
            output = self._edit(output, request.text, step.mode, step.edit_info, None)
        yield output.samples

    def edit(self, request: EditRequest) -> Iterator[AudioChunk]:
        output = request.audio
        text = request.text if request.mode == "paralinguistic" else None
        for _ in range(request.iterations):
            output = self._edit(output, request.transcript, request.mode, request.edit_info, text)
        yield output.samples

    def gpu_memory(self) -> GpuMemory:
        import torch

        if not torch.cuda.is_available():
            return GpuMemory()
        return GpuMemory(torch.cuda.memory_allocated(), torch.cuda.memory_reserved())
