"""Hugging Face transformers text-to-speech models from a local folder: VITS / MMS-TTS, SpeechT5 and Bark.

A model is a folder with `config.json`, the weights and the tokenizer or processor files, as `save_pretrained`
writes it or as it is downloaded from the Hub. Options:

- `path`: the folder (required)
- `device`: "cpu" (default), "cuda" or "cuda:N"
- `dtype`: "float32" (default), "float16" or "bfloat16"
- `quantization`: null (default), "4bit" (bitsandbytes NF4, double quantization, compute in `dtype`) or "8bit";
  needs a CUDA device and the bitsandbytes package
- `voice_name`: the name of the model's one voice (default "default"); multi-speaker VITS models and Bark's voice
  presets name their own voices
- `speaker_embeddings`: SpeechT5 only, a `.npy` x-vector (default: `speaker_embeddings.npy` in the folder, else zeros)
- `vocoder`: SpeechT5 only, a local SpeechT5HifiGan folder (default: the `vocoder` folder inside the model folder)

This module is imported by the server (for `describe` and model discovery): torch and transformers are imported only
inside the worker, by `load` and what runs after it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import structlog

from service.engines.base import AudioChunk, Capabilities, EngineInputError, GpuMemory, SynthesisRequest
from service.engines.text import plain_letters

if TYPE_CHECKING:
    import torch


log = structlog.get_logger("service.engines.transformers_tts")

ENGINE_NAME = "transformers"
MODEL_ID_PREFIX = "hf-"
SUPPORTED_MODEL_TYPES = ("vits", "speecht5", "bark")
# Folders that other engines own, never offered as transformers models.
SKIPPED_FOLDER_PREFIXES = ("Step-Audio",)
_DEFAULT_SAMPLE_RATES = {"speecht5": 16000, "bark": 24000}
# Longest piece of text given to the model at once; longer sentences are cut at commas, then at spaces.
_MAX_CHUNK_CHARS = {"vits": 400, "speecht5": 300, "bark": 200}
_DTYPES = ("float32", "float16", "bfloat16")
_QUANTIZATIONS = ("4bit", "8bit")
_DEVICE = re.compile(r"cpu|cuda(:\d+)?")
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_KNOWN_OPTIONS = ("path", "device", "dtype", "quantization", "voice_name", "speaker_embeddings", "vocoder")
_SPEECHT5_ONLY = ("speaker_embeddings", "vocoder")
# A sentence ends at . ! ? … followed by space, right after a CJK full stop, or at a line break.
_SENTENCE_BREAK = re.compile(r"(?<=[.!?…])\s+|(?<=[。！？])|\s*\n+\s*")

NO_GPU_MESSAGE = "needs an NVIDIA GPU (CUDA): none is visible to the worker"
QUANTIZATION_NEEDS_CUDA_MESSAGE = "bitsandbytes 4-bit/8-bit quantization needs a CUDA device"


# ---- options and config.json (cheap: the server runs these)


@dataclass(frozen=True)
class TransformersOptions:
    path: Path
    device: str = "cpu"
    dtype: str = "float32"
    quantization: str | None = None
    voice_name: str = "default"
    speaker_embeddings: Path | None = None
    vocoder: Path | None = None

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> TransformersOptions:
        unknown = sorted(set(options) - set(_KNOWN_OPTIONS))
        if unknown:
            raise ValueError(f"unknown options {unknown} for the transformers engine; known: {list(_KNOWN_OPTIONS)}")
        if not isinstance(options.get("path"), str) or not options["path"]:
            raise ValueError("option 'path' must name the model folder")
        device = str(options.get("device") or "cpu")
        if not _DEVICE.fullmatch(device):
            raise ValueError(f"option 'device' must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
        dtype = str(options.get("dtype") or "float32")
        if dtype not in _DTYPES:
            raise ValueError(f"option 'dtype' must be one of {list(_DTYPES)}, got {dtype!r}")
        quantization = options.get("quantization")
        if quantization is not None and quantization not in _QUANTIZATIONS:
            raise ValueError(f"option 'quantization' must be null, '4bit' or '8bit', got {quantization!r}")
        speaker_embeddings = options.get("speaker_embeddings")
        vocoder = options.get("vocoder")
        return cls(
            path=Path(options["path"]),
            device=device,
            dtype=dtype,
            quantization=quantization,
            voice_name=str(options.get("voice_name") or "default"),
            speaker_embeddings=Path(speaker_embeddings) if speaker_embeddings else None,
            vocoder=Path(vocoder) if vocoder else None,
        )


def _read_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise TypeError(f"{path}: expected a JSON object")
    return data


def read_model_config(folder: Path) -> dict[str, Any]:
    """The folder's config.json, checked to be a text-to-speech model this engine knows."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder}: no config.json; expected a Hugging Face model folder")
    config = _read_json(config_path)
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"{config_path}: model_type {model_type!r} is not a text-to-speech model the transformers engine knows; "
            f"supported: {list(SUPPORTED_MODEL_TYPES)}"
        )
    return config


def _integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _sample_rate(options: TransformersOptions, config: Mapping[str, Any]) -> int:
    model_type = str(config["model_type"])
    if model_type == "speecht5":  # the vocoder makes the waveform
        vocoder = _vocoder_folder(options)
        if vocoder is not None and (vocoder / "config.json").is_file():
            rate = _integer(_read_json(vocoder / "config.json").get("sampling_rate"))
            if rate:
                return rate
    codec = config.get("codec_config")
    for source in (config, codec if isinstance(codec, dict) else {}):
        for key in ("sampling_rate", "sample_rate"):
            rate = _integer(source.get(key))
            if rate:
                return rate
    return _DEFAULT_SAMPLE_RATES.get(model_type, 16000)


def _vocoder_folder(options: TransformersOptions) -> Path | None:
    if options.vocoder is not None:
        return options.vocoder
    inside = options.path / "vocoder"
    return inside if inside.is_dir() else None


def _bark_presets(folder: Path) -> list[str]:
    """Bark's voice presets whose prompt files are present in the folder."""
    index_path = folder / "speaker_embeddings_path.json"
    if not index_path.is_file():
        return []
    presets = []
    for name, files in _read_json(index_path).items():
        if name == "repo_or_path" or not isinstance(files, dict):
            continue
        if all(isinstance(file, str) and (folder / file).is_file() for file in files.values()):
            presets.append(name)
    return sorted(presets)


def voice_table(options: TransformersOptions, config: Mapping[str, Any]) -> dict[str, int | str | None]:
    """Voice name -> what selects it: a VITS speaker id, a Bark preset name, or None for the model's one voice."""
    model_type = config["model_type"]
    if model_type == "vits":
        named = config.get("speaker_id_map") or config.get("speakers")
        if isinstance(named, dict) and named:
            return {str(name): int(speaker) for name, speaker in sorted(named.items(), key=lambda item: item[1])}
        names = config.get("speaker_names")
        if isinstance(names, list) and names:
            return {str(name): index for index, name in enumerate(names)}
        speakers = _integer(config.get("num_speakers")) or 1
        if speakers > 1:
            return {f"speaker_{index}": index for index in range(speakers)}
    voices: dict[str, int | str | None] = {options.voice_name: None}
    if model_type == "bark":
        voices.update({preset: preset for preset in _bark_presets(options.path) if preset != options.voice_name})
    return voices


# ---- sentences


def split_sentences(text: str, max_chars: int = 400) -> list[str]:
    """Sentences of `text`, each at most `max_chars` long (longer ones are cut at commas, then at spaces)."""
    pieces: list[str] = []
    for sentence in _SENTENCE_BREAK.split(text):
        rest = sentence.strip()
        while len(rest) > max_chars:
            window = rest[: max_chars + 1]
            cut = max(window.rfind(mark) for mark in (", ", "; ", ": ", "، ", "、"))
            cut = cut + 1 if cut > 0 else window.rfind(" ")
            if cut <= 0:
                cut = max_chars
            pieces.append(rest[:cut].strip())
            rest = rest[cut:].strip()
        if rest:
            pieces.append(rest)
    return pieces


# ---- the engine


class _Backend(Protocol):
    def speak(self, text: str, voice: int | str | None, speed: float) -> AudioChunk | None:
        """Audio for one piece of text; None when the text has nothing the model can say."""
        ...


class TransformersEngine:
    """A transformers text-to-speech model (VITS / MMS-TTS, SpeechT5, Bark) loaded from a local folder."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        self._options = TransformersOptions.parse(options)
        self._config = read_model_config(self._options.path)
        self._capabilities = self.describe(options)
        self._voices = voice_table(self._options, self._config)
        self._backend: _Backend | None = None

    @classmethod
    def describe(cls, options: Mapping[str, Any]) -> Capabilities:
        """From the options and the folder's JSON files alone: no torch, no transformers, no weights."""
        parsed = TransformersOptions.parse(options)
        config = read_model_config(parsed.path)
        model_type = config["model_type"]
        if model_type != "speecht5":
            misplaced = [name for name in _SPEECHT5_ONLY if options.get(name)]
            if misplaced:
                raise ValueError(f"options {misplaced} apply to SpeechT5 models only; {parsed.path} is {model_type!r}")
        voices = tuple(voice_table(parsed, config))
        return Capabilities(
            sample_rate=_sample_rate(parsed, config),
            voices=voices,
            default_voice=voices[0],
            device=parsed.device,
            supports_speed=model_type == "vits",
            supports_instructions=False,
        )

    @classmethod
    def import_libraries(cls, options: Mapping[str, Any]) -> None:
        """torch, transformers and the model classes a load imports (a warm spare's work); nothing here initialises
        CUDA, so a spare holds no GPU memory. bitsandbytes is left to the load of a quantized model."""
        _offline()
        import torch  # noqa: F401
        from transformers import AutoTokenizer  # noqa: F401
        from transformers.models.bark.modeling_bark import BarkModel  # noqa: F401
        from transformers.models.speecht5.modeling_speecht5 import SpeechT5ForTextToSpeech  # noqa: F401
        from transformers.models.vits.modeling_vits import VitsModel  # noqa: F401

        try:
            from transformers.conversion_mapping import get_checkpoint_conversion_mapping
        except ImportError:  # transformers 4.x has no such table
            return
        # the checkpoint renaming rules of every architecture, which the first from_pretrained of a process builds
        get_checkpoint_conversion_mapping("vits")

    def load(self) -> None:
        _offline()
        import torch

        options = self._options
        if options.device.startswith("cuda"):
            if not torch.cuda.is_available():
                raise RuntimeError(NO_GPU_MESSAGE)
            index = torch.device(options.device).index
            if index is not None and index >= torch.cuda.device_count():
                raise RuntimeError(
                    f"device {options.device!r} does not exist: the worker sees {torch.cuda.device_count()} CUDA GPU(s)"
                )
        if options.quantization is not None:
            if not options.device.startswith("cuda"):
                raise RuntimeError(
                    f"{QUANTIZATION_NEEDS_CUDA_MESSAGE}; this model is configured for device {options.device!r} "
                    f"(set device = 'cuda' or remove quantization = {options.quantization!r})"
                )
            import importlib.util

            if importlib.util.find_spec("bitsandbytes") is None:
                raise RuntimeError(
                    f"quantization {options.quantization!r} needs the bitsandbytes package in the worker's environment"
                )
        if not any((options.path / name).is_file() for name in _WEIGHT_FILES):
            raise FileNotFoundError(f"{options.path}: no model weights (expected one of {', '.join(_WEIGHT_FILES)})")
        model_type = self._config["model_type"]
        if model_type == "vits":
            self._backend = _VitsBackend(options)
        elif model_type == "speecht5":
            self._backend = _SpeechT5Backend(options)
        else:
            self._backend = _BarkBackend(options)

    def synthesize(self, request: SynthesisRequest) -> Iterator[AudioChunk]:
        if self._backend is None:
            raise RuntimeError("synthesize called before load")
        if request.voice not in self._voices:
            raise EngineInputError("voice", f"voice {request.voice!r} is not one of {list(self._voices)}")
        if request.speed != 1.0 and not self._capabilities.supports_speed:
            raise EngineInputError("speed", f"{self._config['model_type']} models cannot change speed")
        if request.instructions:
            raise EngineInputError("instructions", "transformers text-to-speech models cannot follow instructions")
        if request.reference is not None or request.edits:
            raise EngineInputError("reference", "transformers text-to-speech models cannot clone or edit voices")
        voice = self._voices[request.voice]
        for sentence in split_sentences(plain_letters(request.text), _MAX_CHUNK_CHARS[self._config["model_type"]]):
            audio = self._backend.speak(sentence, voice, request.speed)
            if audio is not None and len(audio):
                yield audio

    def gpu_memory(self) -> GpuMemory:
        if self._backend is None or not self._options.device.startswith("cuda"):
            return GpuMemory()
        import torch

        device = torch.device(self._options.device)
        return GpuMemory(
            allocated_bytes=int(torch.cuda.memory_allocated(device)),
            reserved_bytes=int(torch.cuda.memory_reserved(device)),
        )


# ---- what runs in the worker only


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the Hub from a worker
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no "Loading weights" bars in the worker's log


def _torch_dtype(options: TransformersOptions) -> torch.dtype:
    import torch

    dtype: torch.dtype = getattr(torch, options.dtype)
    return dtype


def _from_pretrained_kwargs(options: TransformersOptions, *, quantize: bool = True) -> dict[str, Any]:
    """local_files_only, dtype and, when asked for, bitsandbytes quantization placed on the device."""
    import transformers

    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    dtype_key = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"  # `dtype` replaced `torch_dtype` in 4.56
    kwargs: dict[str, Any] = {"local_files_only": True, dtype_key: _torch_dtype(options)}
    if quantize and options.quantization is not None:
        from transformers import BitsAndBytesConfig

        if options.quantization == "4bit":
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=_torch_dtype(options),
            )
        else:
            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        kwargs["device_map"] = {"": options.device}
    return kwargs


def _place(model: Any, device: str, *, quantized: bool = False) -> None:
    """Move a model to its device (quantized models were placed while loading) and switch it to inference.

    `model` is Any: mypy cannot bind the decorated `PreTrainedModel.to` to an instance."""
    if not quantized:
        model.to(device)
    model.eval()


def _mono(audio: torch.Tensor) -> AudioChunk:
    return np.ascontiguousarray(audio.detach().float().cpu().numpy().reshape(-1), dtype=np.float32)


class _VitsBackend:
    """VITS and MMS-TTS: one forward pass per sentence; speed is the model's speaking_rate."""

    def __init__(self, options: TransformersOptions) -> None:
        from transformers import AutoTokenizer
        from transformers.models.vits.modeling_vits import VitsModel

        self._device = options.device
        self._tokenizer = AutoTokenizer.from_pretrained(options.path, local_files_only=True)
        self._model = VitsModel.from_pretrained(options.path, **_from_pretrained_kwargs(options))
        _place(self._model, options.device, quantized=options.quantization is not None)

    def speak(self, text: str, voice: int | str | None, speed: float) -> AudioChunk | None:
        import torch
        from transformers.models.vits.modeling_vits import VitsModelOutput

        inputs = self._tokenizer(text, return_tensors="pt")
        input_ids = inputs["input_ids"]
        if not bool((input_ids != self._tokenizer.pad_token_id).any()):
            return None  # nothing but characters the vocabulary does not have
        previous_rate = self._model.speaking_rate
        self._model.speaking_rate = speed  # transformers 4.x reads the attribute; 5.x also takes it as an argument
        try:
            with torch.inference_mode():
                output = self._model(
                    input_ids=input_ids.to(self._device),
                    attention_mask=inputs["attention_mask"].to(self._device),
                    speaker_id=voice if isinstance(voice, int) else None,
                    return_dict=True,
                )
        finally:
            self._model.speaking_rate = previous_rate
        assert isinstance(output, VitsModelOutput)
        assert output.waveform is not None
        return _mono(output.waveform[0])


class _SpeechT5Backend:
    """SpeechT5: spectrogram from the text, waveform from the HiFi-GAN vocoder, one x-vector as the voice."""

    def __init__(self, options: TransformersOptions) -> None:
        import torch
        from transformers.models.speecht5.modeling_speecht5 import SpeechT5ForTextToSpeech, SpeechT5HifiGan
        from transformers.models.speecht5.processing_speecht5 import SpeechT5Processor

        vocoder_path = _vocoder_folder(options)
        if vocoder_path is None:
            raise FileNotFoundError(
                f"{options.path}: SpeechT5 needs a vocoder: set the 'vocoder' option to a local SpeechT5HifiGan folder "
                "(such as microsoft/speecht5_hifigan) or put one in a 'vocoder' folder inside the model folder"
            )
        self._device = options.device
        self._processor = SpeechT5Processor.from_pretrained(options.path, local_files_only=True)
        self._model = SpeechT5ForTextToSpeech.from_pretrained(options.path, **_from_pretrained_kwargs(options))
        _place(self._model, options.device, quantized=options.quantization is not None)
        self._vocoder = SpeechT5HifiGan.from_pretrained(
            vocoder_path, **_from_pretrained_kwargs(options, quantize=False)
        )
        _place(self._vocoder, options.device)
        embedding_path = options.speaker_embeddings or options.path / "speaker_embeddings.npy"
        size = int(self._model.config.speaker_embedding_dim)
        if embedding_path.is_file():
            embedding = np.load(embedding_path, allow_pickle=False).astype(np.float32).reshape(1, -1)
            if embedding.shape[1] != size:
                raise ValueError(
                    f"{embedding_path}: a speaker embedding of {embedding.shape[1]} values; expected {size}"
                )
        elif options.speaker_embeddings is not None:
            raise FileNotFoundError(f"{embedding_path}: no such speaker embeddings file")
        else:
            embedding = np.zeros((1, size), dtype=np.float32)
        self._speaker = torch.from_numpy(embedding).to(self._device, dtype=_torch_dtype(options))

    def speak(self, text: str, voice: int | str | None, speed: float) -> AudioChunk | None:
        import torch

        inputs = self._processor(text=text, return_tensors="pt")
        with torch.inference_mode():
            speech = self._model.generate_speech(
                inputs["input_ids"].to(self._device), self._speaker, vocoder=self._vocoder
            )
        waveform = speech[0] if isinstance(speech, tuple) else speech
        return _mono(waveform)


class _BarkBackend:
    """Bark: generate per sentence; voices are the folder's voice presets."""

    def __init__(self, options: TransformersOptions) -> None:
        from transformers.models.bark.modeling_bark import BarkModel
        from transformers.models.bark.processing_bark import BarkProcessor

        self._device = options.device
        self._processor = BarkProcessor.from_pretrained(options.path, local_files_only=True)
        self._model = BarkModel.from_pretrained(options.path, **_from_pretrained_kwargs(options))
        _place(self._model, options.device, quantized=options.quantization is not None)

    def speak(self, text: str, voice: int | str | None, speed: float) -> AudioChunk | None:
        import torch

        inputs = self._processor(text, voice_preset=voice if isinstance(voice, str) else None)
        with torch.inference_mode():
            audio = self._model.generate(**inputs.to(self._device))
        waveform = audio[0] if isinstance(audio, tuple) else audio
        return _mono(waveform[0])


# ---- discovery (cheap: reads JSON files only)


def _model_type(folder: Path) -> str | None:
    try:
        model_type = _read_json(folder / "config.json").get("model_type")
    except (OSError, ValueError, TypeError):
        return None
    return model_type if isinstance(model_type, str) else None


def find_model_folders(models_dir: Path) -> list[Path]:
    """Folders under `models_dir` whose config.json names a supported model type; a model's own subfolders are not
    searched, nor hidden folders or those another engine owns (Step-Audio*)."""
    found: list[Path] = []
    visited: set[Path] = set()

    def visit(folder: Path) -> None:
        try:
            children = sorted(child for child in folder.iterdir() if child.is_dir())
        except OSError:
            return
        for child in children:
            if child.name.startswith((".", *SKIPPED_FOLDER_PREFIXES)):
                continue
            real = child.resolve()
            if real in visited:  # symlinked folders are searched once
                continue
            visited.add(real)
            if _model_type(child) in SUPPORTED_MODEL_TYPES:
                found.append(child)
            else:
                visit(child)

    visit(Path(models_dir))
    return found
