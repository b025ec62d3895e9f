"""A stand-in for a Step-Audio-EditX checkout, written to a temporary folder by the tests.

Its `tokenizer.py` and `tts.py` have the upstream's class names and signatures; instead of a 3B model they
record every call (arguments, and what they found in the audio files they were given) to `calls.jsonl` beside
them and answer with a tone at 24 kHz. The real model has not been run here: no GPU, no weights.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.engines.step_audio import (
    FUNASR_FOLDER,
    FUNASR_MODELS,
    TOKENIZER_FILES,
    TOKENIZER_FOLDER,
    VARIANT_FOLDERS,
    VOCODER_FILES,
)

_RECORDER = """
import json
import os
from pathlib import Path

CALLS = Path(__file__).with_name("calls.jsonl")


def record(**fields):
    with CALLS.open("a") as calls:
        calls.write(json.dumps(fields, default=str) + "\\n")
"""

_TOKENIZER = (
    _RECORDER
    + """

class StepAudioTokenizer:
    def __init__(self, encoder_path, model_source="auto",
                 funasr_model_id="dengcunqin/speech_paraformer-large_asr_nat-zh-cantonese-en-16k-vocab8501-online"):
        record(call="StepAudioTokenizer", encoder_path=encoder_path, model_source=model_source,
               funasr_exists=os.path.isdir(os.path.join(encoder_path, funasr_model_id)), pid=os.getpid())
"""
)

_TTS = (
    _RECORDER
    + """
import numpy as np
import soundfile
import torch

with CALLS.with_name("imports.jsonl").open("a") as imports:  # which processes paid for these imports
    imports.write(json.dumps({"pid": os.getpid()}) + "\\n")

EDIT_TYPES = {"emotion", "style", "speed", "paralinguistic", "denoise", "vad"}


class HTTPException(Exception):
    def __init__(self, status_code, detail=""):
        super().__init__(detail)
        self.status_code = status_code


def _tone(seconds, pitch):
    t = np.arange(int(24000 * seconds)) / 24000
    return torch.from_numpy((0.2 * np.sin(2 * np.pi * pitch * t)).astype(np.float32)).unsqueeze(0)


def _audio(path):
    info = soundfile.info(path)
    return {"path": path, "exists": os.path.exists(path), "rate": info.samplerate, "seconds": round(info.duration, 3),
            "channels": info.channels}


class StepAudioTTS:
    def __init__(self, model_path, audio_tokenizer, model_source="auto", tts_model_id=None,
                 quantization_config=None, torch_dtype=torch.bfloat16, device_map="cuda"):
        record(call="StepAudioTTS", model_path=model_path, tokenizer=type(audio_tokenizer).__name__,
               model_source=model_source, tts_model_id=tts_model_id, quantization_config=quantization_config,
               torch_dtype=str(torch_dtype), device_map=device_map)

    def clone(self, prompt_wav_path, prompt_text, target_text):
        record(call="clone", prompt=_audio(prompt_wav_path), prompt_text=prompt_text, target_text=target_text)
        return _tone(0.5 + 0.05 * len(target_text), 220), 24000

    def edit(self, input_audio_path, audio_text, edit_type, edit_info=None, text=None):
        if edit_type not in EDIT_TYPES:
            raise HTTPException(400, f"unsupported edit type {edit_type}")
        source = _audio(input_audio_path)
        record(call="edit", input=source, audio_text=audio_text, edit_type=edit_type, edit_info=edit_info, text=text)
        return _tone(source["seconds"] + 0.25, 330), 24000
"""
)


def _write_funasr_registry(checkout: Path) -> None:
    """funasr_detach as far as the adapter looks at it: a registry in which the Paraformer models are registered."""
    package = checkout / "funasr_detach"
    (package / "models").mkdir(parents=True)
    for init in (package / "__init__.py", package / "models" / "__init__.py"):
        init.write_text("")
    registered = dict.fromkeys(FUNASR_MODELS, "object")
    (package / "register.py").write_text(
        f"class RegisterTables:\n    model_classes = {registered!r}\n\n\ntables = RegisterTables()\n"
    )


@dataclass(frozen=True)
class StandIn:
    checkout: Path

    @property
    def models(self) -> Path:
        return self.checkout / "models"

    def calls(self) -> list[dict[str, Any]]:
        path = self.checkout / "calls.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def forget_calls(self) -> None:
        (self.checkout / "calls.jsonl").unlink(missing_ok=True)

    def calls_named(self, name: str) -> list[dict[str, Any]]:
        return [call for call in self.calls() if call["call"] == name]

    def importing_pids(self) -> list[int]:
        """The processes that imported the stand-in's tts.py (and torch with it), in order."""
        path = self.checkout / "imports.jsonl"
        if not path.exists():
            return []
        return [json.loads(line)["pid"] for line in path.read_text().splitlines()]


# what the FunASR folder's configuration.json maps to files, as FunASR's published models have it
FUNASR_FILE_PATH_METAS = {
    "init_param": "model.pt",
    "config": "config.yaml",
    "tokenizer_conf": {"token_list": "tokens.json", "seg_dict_file": "seg_dict"},
    "frontend_conf": {"cmvn_file": "am.mvn"},
}
LLM_AUTO_MAP = {
    "AutoConfig": "configuration_step1.Step1Config",
    "AutoModelForCausalLM": "modeling_step1.Step1ForCausalLM",
}


def placeholder_files(folder: Path, names: Iterable[str]) -> None:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"")


def write_placeholder_models(models: Path) -> Path:
    """A models folder laid out as Step-Audio-EditX's published weights are, every file the adapter checks for in
    place, each an empty placeholder (the JSON files that name other files are real): a load gets past the checks
    and the imports, and stops where the first upstream constructor reads weights."""
    tokenizer = models / TOKENIZER_FOLDER
    placeholder_files(tokenizer, TOKENIZER_FILES)
    funasr = tokenizer / FUNASR_FOLDER
    funasr.mkdir(parents=True)
    (funasr / "configuration.json").write_text(json.dumps({"file_path_metas": FUNASR_FILE_PATH_METAS}))
    placeholder_files(funasr, ("model.pt", "config.yaml", "tokens.json", "seg_dict", "am.mvn"))
    for folder in VARIANT_FOLDERS.values():
        variant = models / folder
        variant.mkdir(parents=True)
        (variant / "config.json").write_text(json.dumps({"auto_map": LLM_AUTO_MAP}))
        placeholder_files(variant, ("configuration_step1.py", "modeling_step1.py", "model.safetensors"))
        placeholder_files(variant, ("tokenizer_config.json", "tokenizer.json"))
        placeholder_files(variant / "CosyVoice-300M-25Hz", VOCODER_FILES)
    return models


def write_standin(root: Path) -> StandIn:
    """A checkout with the upstream's module names and a complete models/ folder of placeholder files."""
    checkout = root / "Step-Audio-EditX"
    checkout.mkdir(parents=True)
    (checkout / "tokenizer.py").write_text(textwrap.dedent(_TOKENIZER))
    (checkout / "tts.py").write_text(textwrap.dedent(_TTS))
    _write_funasr_registry(checkout)
    write_placeholder_models(checkout / "models")
    return StandIn(checkout)
