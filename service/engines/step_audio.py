"""Step-Audio-EditX: voice cloning and audio editing, driving the classes of the user's own upstream checkout.

The checkout's folder goes on `sys.path` inside the worker only; nothing of the upstream code is copied here.
Facts used (signatures, folder names, vocabularies) are listed in docs/step-audio.md.
"""

from __future__ import annotations

import importlib
import inspect
import json
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
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
TOKENIZER_FILES = ("linguistic_tokenizer.npy", "speech_tokenizer_v1.onnx")
FUNASR_FOLDER = "dengcunqin/speech_paraformer-large_asr_nat-zh-cantonese-en-16k-vocab8501-online"
# the FunASR folder's configuration.json names its files; without these four the upstream loader goes on silently
# (random encoder weights, no feature normalisation) or fails late
FUNASR_REQUIRED_FILES = ("config", "init_param", "tokenizer_conf.token_list", "frontend_conf.cmvn_file")
VOCODER_FILES = ("cosyvoice.yaml", "flow.pt", "hift.pt", "campplus.onnx")
LLM_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
LLM_TOKENIZERS = ("tokenizer.json", "tokenizer.model")
# upstream's code imports these from its checkout; the fork's .gitignore (`models/`) leaves the second out of git
CHECKOUT_FILES = ("tokenizer.py", "tts.py", "funasr_detach/models/__init__.py")
# the FunASR models the tokenizer's Paraformer loads, and the modules that register them
FUNASR_MODELS = {
    "Paraformer": "funasr_detach.models.paraformer.model",
    "ParaformerStreaming": "funasr_detach.models.paraformer_streaming.model",
}
QUANTIZATION = {"base": None, "bnb": "int4", "awq": "awq-4bit"}
NEEDS_GPU = "needs an NVIDIA GPU (CUDA): none is visible to the worker (check the container's --gpus and GPU_ID)"


@dataclass(frozen=True)
class VariantCheck:
    """Whether one variant can be served from these folders, and if not, why."""

    variant: str
    model_path: Path
    problems: tuple[str, ...]


def _missing(path: Path, why: str = "") -> str:
    return f"{path} is missing{f' ({why})' if why else ''}"


def _json_object(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """The JSON object in a file, or the problem with it."""
    if not path.is_file():
        return None, _missing(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        return None, f"{path} is not valid JSON: {error}"
    if not isinstance(value, dict):
        return None, f"{path} is not a JSON object"
    return value, None


def _metas(value: object, prefix: str = "") -> dict[str, str]:
    """configuration.json's `file_path_metas` flattened: dotted key -> relative file name."""
    if isinstance(value, str):
        return {prefix: value}
    if not isinstance(value, dict):
        return {}
    return {
        key: name
        for child, nested in value.items()
        for key, name in _metas(nested, f"{prefix}.{child}" if prefix else str(child)).items()
    }


def check_checkout(project_dir: Path) -> list[str]:
    """The files of the checkout the worker imports."""
    problems = []
    for name in CHECKOUT_FILES:
        if not (project_dir / name).is_file():
            why = "the fork's .gitignore leaves funasr_detach/models out of git: copy it from upstream's checkout"
            problems.append(_missing(project_dir / name, why if name.startswith("funasr_detach") else ""))
    return problems


def check_tokenizer(tokenizer_path: Path) -> list[str]:
    """Everything StepAudioTokenizer reads: its two files and the FunASR model folder, file by file."""
    if not tokenizer_path.is_dir():
        return [_missing(tokenizer_path)]
    problems = [_missing(tokenizer_path / name) for name in TOKENIZER_FILES if not (tokenizer_path / name).is_file()]
    funasr = tokenizer_path / FUNASR_FOLDER
    if not funasr.is_dir():
        return [*problems, _missing(funasr, "without it the upstream code downloads it from the ModelScope hub")]
    configuration, problem = _json_object(funasr / "configuration.json")
    if configuration is None:
        return [*problems, f"{problem} (it names the FunASR model's files)"]
    metas = _metas(configuration.get("file_path_metas"))
    for key in FUNASR_REQUIRED_FILES:
        if key not in metas:
            problems.append(f"{funasr / 'configuration.json'} names no {key} in file_path_metas")
    problems += [
        _missing(funasr / name, f"file_path_metas.{key}")
        for key, name in metas.items()
        if not (funasr / name).is_file()
    ]
    return problems


def check_model_folder(model_path: Path) -> list[str]:
    """Everything StepAudioTTS reads from a variant folder: the language model with its code, weights and text
    tokenizer, and the CosyVoice vocoder inside it."""
    if not model_path.is_dir():
        return [_missing(model_path)]
    config, problem = _json_object(model_path / "config.json")
    problems = [problem] if problem else []
    auto_map = config.get("auto_map", {}) if config else {}
    modules = sorted(
        {f"{target.split('--')[-1].rsplit('.', 1)[0]}.py" for target in auto_map.values() if isinstance(target, str)}
    )
    problems += [
        _missing(model_path / name, "the model's own code") for name in modules if not (model_path / name).is_file()
    ]
    if not any((model_path / name).is_file() for name in LLM_WEIGHTS):
        problems.append(f"{model_path} has no weights ({' or '.join(LLM_WEIGHTS)})")
    index, _ = _json_object(model_path / "model.safetensors.index.json")
    shards = sorted({str(name) for name in (index or {}).get("weight_map", {}).values()})
    problems += [_missing(model_path / name, "a weights shard") for name in shards if not (model_path / name).is_file()]
    if not (model_path / "tokenizer_config.json").is_file():
        problems.append(_missing(model_path / "tokenizer_config.json"))
    if not any((model_path / name).is_file() for name in LLM_TOKENIZERS):
        problems.append(f"{model_path} has no text tokenizer ({' or '.join(LLM_TOKENIZERS)})")
    vocoder = model_path / "CosyVoice-300M-25Hz"
    problems += [_missing(vocoder / name) for name in VOCODER_FILES if not (vocoder / name).is_file()]
    return problems


def check_variant(project_dir: Path, models_dir: Path, variant: str) -> VariantCheck:
    """Everything the upstream code reads from disk for this variant, checked before anything is loaded, so that no
    upstream constructor meets a missing file (and none falls back to a hub download)."""
    model_path = models_dir / VARIANT_FOLDERS[variant]
    problems = [
        *check_checkout(project_dir),
        *check_model_folder(model_path),
        *check_tokenizer(models_dir / TOKENIZER_FOLDER),
    ]
    return VariantCheck(variant, model_path, tuple(problems))


def import_checkout(project_dir: Path) -> tuple[ModuleType, ModuleType]:
    """The checkout's `tokenizer` and `tts` modules, imported from the checkout as its own scripts do. funasr_detach
    swallows its submodules' import errors, so a missing library would only show when the tokenizer loads: check
    that the FunASR models it loads were registered, and say what stopped them."""
    sys.path.insert(0, str(project_dir))
    tokenizer = importlib.import_module("tokenizer")
    tts = importlib.import_module("tts")
    registered = importlib.import_module("funasr_detach.register").tables.model_classes
    for name, module in FUNASR_MODELS.items():
        if name not in registered:
            try:
                importlib.import_module(module)
            except Exception as error:
                raise RuntimeError(f"FunASR's {name} is not registered: importing {module} fails: {error!r}") from error
            raise RuntimeError(f"FunASR's {name} is not registered, though {module} imports")
    return tokenizer, tts


def _construct(upstream_class: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """An upstream object; its failure (missing or unreadable weights, no GPU) is named after the class."""
    try:
        return upstream_class(*args, **kwargs)
    except Exception as error:
        name = getattr(upstream_class, "__name__", "the upstream class")
        raise RuntimeError(f"{name} failed to load: {type(error).__name__}: {error}") from error


def _to_samples(audio: Any) -> AudioChunk:
    """The upstream's output tensor (batch of one) as a flat float32 array."""
    if hasattr(audio, "detach"):
        audio = audio.detach().float().cpu().numpy()
    return np.asarray(audio, dtype=np.float32).reshape(-1)


class StepAudioEngine:
    """Options: project_dir (the upstream checkout), models_dir, variant (base | bnb | awq), dtype (bfloat16),
    default_voice (a voice library name), require_cuda (true; false only for stand-ins)."""

    # the checkout is the user's: leave no __pycache__ in it (the container mounts it read-only anyway)
    worker_environment: Mapping[str, str] = {"PYTHONDONTWRITEBYTECODE": "1"}

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
            language_tags=LANGUAGE_TAGS,
            paralinguistic_tags=PARALINGUISTIC_TAGS,
        )

    @classmethod
    def probe_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """What the import probe depends on: the checkout alone, so the variants of one checkout share a probe."""
        return {"project_dir": str(options["project_dir"])}

    @classmethod
    def probe(cls, options: Mapping[str, Any]) -> None:
        """Import the checkout as a load does, without reading weights or touching a GPU."""
        project_dir = Path(options["project_dir"])
        problems = check_checkout(project_dir)
        if problems:
            raise RuntimeError("; ".join(problems))
        import_checkout(project_dir)

    # a warm spare imports what the probe imports (the checkout, and through it torch, transformers, onnxruntime,
    # librosa and FunASR's code), but with the model's own environment
    import_options = probe_options
    import_libraries = probe

    def check(self) -> VariantCheck:
        """The variant's files, checked before the worker imports the checkout (seconds of torch and FunASR)."""
        check = check_variant(Path(self._options["project_dir"]), Path(self._options["models_dir"]), self._variant)
        if check.problems:
            raise RuntimeError("; ".join(check.problems))
        return check

    def load(self) -> None:
        import torch

        if self._options.get("require_cuda", True) and not torch.cuda.is_available():
            raise RuntimeError(NEEDS_GPU)
        project_dir = Path(self._options["project_dir"])
        models_dir = Path(self._options["models_dir"])
        check = self.check()
        tokenizer_module, tts_module = import_checkout(project_dir)
        tokenizer_class = tokenizer_module.StepAudioTokenizer
        # the fork's tokenizer caches FunASR results under a hard-coded /app/cache/funasr unless told not to
        cache_off = {"enable_cache": False} if "enable_cache" in inspect.signature(tokenizer_class).parameters else {}
        tokenizer = _construct(tokenizer_class, str(models_dir / TOKENIZER_FOLDER), model_source="local", **cache_off)
        self._tts = _construct(
            tts_module.StepAudioTTS,
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
