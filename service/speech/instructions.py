"""OpenAI's `instructions` and `speed`, turned into the edit steps of an engine that has edit modes."""

from __future__ import annotations

import re
from collections.abc import Mapping

from service.engines.base import EditStep
from service.errors import InvalidRequest

# words people write that mean one of the engines' edit values
SYNONYMS: dict[str, tuple[str, str]] = {
    "happily": ("emotion", "happy"),
    "cheerful": ("emotion", "happy"),
    "cheerfully": ("emotion", "happy"),
    "joyful": ("emotion", "happy"),
    "angrily": ("emotion", "angry"),
    "sadly": ("emotion", "sad"),
    "excitedly": ("emotion", "excited"),
    "surprise": ("emotion", "surprised"),
    "fearful": ("emotion", "fear"),
    "scared": ("emotion", "fear"),
    "cold": ("emotion", "coldness"),
    "whispering": ("style", "whisper"),
    "whispered": ("style", "whisper"),
    "shouting": ("style", "shout"),
    "murmuring": ("style", "murmur"),
    "fast": ("speed", "faster"),
    "quickly": ("speed", "faster"),
    "quicker": ("speed", "faster"),
    "slow": ("speed", "slower"),
    "slowly": ("speed", "slower"),
}
_STRUCTURED = re.compile(r"^\s*[a-z_]+\s*[=:]")


def check_edit(
    mode: str, edit_info: str | None, edit_options: Mapping[str, tuple[str, ...]], param: str = "edit_info"
) -> str | None:
    """The edit_info to send for `mode`, after checking both against what the engine accepts."""
    if mode not in edit_options:
        raise InvalidRequest(
            f"mode {mode!r} is not an edit this model makes; modes: {', '.join(edit_options)}",
            param="mode",
            code="invalid_value",
        )
    accepted = edit_options[mode]
    if not accepted:
        return None
    if edit_info not in accepted:
        raise InvalidRequest(
            f"{param} {edit_info!r} is not one of this model's {mode} values: {', '.join(accepted)}",
            param=param,
            code="invalid_value",
        )
    return edit_info


def speed_edit(speed: float, edit_options: Mapping[str, tuple[str, ...]]) -> EditStep | None:
    """OpenAI's speed factor as the nearest speed edit: >= 1.5 'more faster', > 1 'faster', < 1 'slower',
    <= 0.67 'more slower'."""
    if speed == 1.0:
        return None
    if "speed" not in edit_options:
        raise InvalidRequest("this model cannot change speed", param="speed", code="unsupported_value")
    if speed >= 1.5:
        value = "more faster"
    elif speed > 1.0:
        value = "faster"
    elif speed > 0.67:
        value = "slower"
    else:
        value = "more slower"
    return EditStep("speed", check_edit("speed", value, edit_options, "speed"))


def _structured(text: str, edit_options: Mapping[str, tuple[str, ...]]) -> list[EditStep]:
    steps = []
    for part in re.split(r"[;,\n]", text):
        if not part.strip():
            continue
        mode, _, value = part.replace(":", "=", 1).partition("=")
        mode, value = mode.strip().lower(), value.strip().lower()
        if mode == "paralinguistic":
            raise InvalidRequest(
                "paralinguistic edits need a transcript with tags: use POST /v1/audio/edit",
                param="instructions",
                code="unsupported_value",
            )
        steps.append(EditStep(mode, check_edit(mode, value or None, edit_options, "instructions")))
    return steps


def _free_text(text: str, edit_options: Mapping[str, tuple[str, ...]]) -> list[EditStep]:
    lowered = " " + re.sub(r"[^a-z_ ]+", " ", text.lower()) + " "
    found: dict[str, str] = {}
    for mode, values in edit_options.items():
        for value in sorted(values, key=len, reverse=True):
            if value != "remove" and f" {value} " in lowered and mode not in found:
                found[mode] = value
    for word, (mode, value) in SYNONYMS.items():
        if f" {word} " in lowered and mode in edit_options and mode not in found:
            found[mode] = value
    return [EditStep(mode, value) for mode, value in found.items()]


def edits_from_instructions(
    instructions: str | None, edit_options: Mapping[str, tuple[str, ...]]
) -> tuple[EditStep, ...]:
    """Edit steps for the instructions: either `mode=value` pairs ("emotion=happy; style=whisper") or plain
    words naming values ("sound happy and whisper", "speak faster")."""
    if not instructions or not instructions.strip():
        return ()
    if _STRUCTURED.match(instructions.lower()):
        steps = _structured(instructions, edit_options)
    else:
        steps = _free_text(instructions, edit_options)
    if not steps:
        known = "; ".join(f"{mode}: {', '.join(values)}" for mode, values in edit_options.items() if values)
        raise InvalidRequest(
            "instructions name no emotion, style or speed this model can apply; use words such as "
            f"'happy', 'whisper', 'faster', or 'mode=value' pairs. Known values: {known}",
            param="instructions",
            code="invalid_value",
        )
    return tuple(steps)
