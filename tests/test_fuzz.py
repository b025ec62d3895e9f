"""Fuzz the API from its own OpenAPI schema: every documented operation, with valid and invalid requests, against
the real app (uvicorn on a real socket; real worker processes for the Piper voice, the tone engine and the
Step-Audio-EditX stand-in).

For every generated request: no 5xx, a status code the schema documents for the operation, a content type it
documents for that status, a body matching the documented schema, and schema-invalid requests rejected with a 4xx.
Random values rarely name a model, a voice or a readable clip, so besides schemathesis' own cases each operation
also gets cases aimed at what this server has (its model ids, its voices, small valid audio clips): those reach the
workers, the loader and the voice library. The number of cases is printed and checked against a minimum
(docs/reliability.md records it); FUZZ_EXAMPLES=<n> sets the examples per operation and mode for a deeper run.
"""

from __future__ import annotations

import io
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import schemathesis
import soundfile
import uvicorn
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from litestar import Litestar
from schemathesis import checks
from schemathesis.core.result import Err, Ok
from schemathesis.generation import GenerationMode

from service.app import create_app
from service.lazy_loader import ModelPolicy
from service.models.catalog import ModelSpec
from service.settings import Settings
from tests.conftest import WITHOUT_SPARES, tone_model
from tests.support.openai_reference import reference, validate
from tests.support.processes import cmdline, free_port, thread_children
from tests.support.step_audio_standin import write_standin

pytestmark = pytest.mark.slow

Case = schemathesis.Case[Any]

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))
# speech gets more: it has the most fields, and most of its cases are served by a real model
SPEECH_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "120"))
SPEECH = "POST /v1/audio/speech"
SPEECH_UPLOAD = "POST /v1/audio/speech/upload"
EDIT = "POST /v1/audio/edit"
# the operations in three shards, each against a server of its own, so the suite's test processes fuzz them side by
# side; with the fewest cases each must reach (a run sends about 10 % more; docs/reliability.md has the figures)
SHARDS: dict[str, tuple[Callable[[str], bool], int]] = {
    "speech": (lambda label: label == SPEECH, 215),
    "upload-and-edit": (lambda label: label in (SPEECH_UPLOAD, EDIT), 320),
    "the-rest": (lambda label: label not in (SPEECH, SPEECH_UPLOAD, EDIT), 545),
}
SPEECH_MODELS = ("tts-1", "piper-joe", "tone", "editx")
PRESET_VOICE = "narrator"

RESPONSE_CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]
NEGATIVE_CHECKS = [*RESPONSE_CHECKS, checks.negative_data_rejection]


def clip(seconds: float = 1.0, rate: int = 24000, audio_format: str = "WAV", channels: int = 1) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    samples = np.repeat((0.3 * np.sin(2 * np.pi * 220 * t))[:, None], channels, axis=1).astype(np.float32)
    output = io.BytesIO()
    soundfile.write(output, samples, rate, format=audio_format)
    return output.getvalue()


CLIPS = (
    clip(),
    clip(0.5, 16000, "FLAC"),
    clip(2.0, 44100, "WAV", channels=2),
    clip(0.1),  # too short: 400
    b"RIFF\x00\x00\x00\x00WAVEfmt ",  # truncated
)
# readable clips more often than the others
SOME_CLIPS = (CLIPS[0], CLIPS[1], CLIPS[0], CLIPS[1], *CLIPS)


@contextmanager
def served(app: Litestar) -> Iterator[str]:
    """The app behind uvicorn on a free loopback port, in a thread with its own event loop (lifespan included:
    the loader, its reapers and its workers start and stop with it)."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_config=None))
    thread = threading.Thread(target=server.run, name="fuzzed-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), "the server thread ended before it started serving"
        assert time.monotonic() < deadline, "the server did not start in 30 s"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        assert not thread.is_alive(), "the server did not shut down in 60 s"


def edit_bodies() -> st.SearchStrategy[dict[str, Any]]:
    """Edit forms for the stand-in: mostly valid (a readable clip, a mode with a value it takes), some not."""
    edits = st.sampled_from(
        [
            {"mode": "emotion", "edit_info": "happy"},
            {"mode": "style", "edit_info": "whisper"},
            {"mode": "speed", "edit_info": "faster"},
            {"mode": "paralinguistic", "text": "What the clip says [Laughter]."},
            {"mode": "denoise"},
            {"mode": "vad"},
            {"mode": "emotion", "edit_info": "zz"},
            {"mode": "paralinguistic"},
            {"mode": "x"},
        ]
    )
    common = st.fixed_dictionaries(
        {
            "audio": st.sampled_from(SOME_CLIPS),
            "transcript": st.sampled_from(("What the clip says.", "What the clip says.", " ")),
            "model": st.sampled_from(("editx", "editx", "editx", "piper-joe")),
            "n_edit_iter": st.integers(1, 5) | st.sampled_from((0, 6)),
            "response_format": st.sampled_from(("wav", "mp3", "flac", "opus", "pcm", "aac")),
        },
        optional={"keep_alive": st.sampled_from(("30", "0", "1m", "-1", "never"))},
    )
    return st.builds(lambda edit, fields: {**fields, **edit}, edits, common)


def _speech_body(case: Case, model: str, tidy: bool) -> Case:
    """Aim a generated speech request at a model this server has; `tidy` also drops the fields a random value
    almost always makes invalid (a voice the model lacks, instructions Piper refuses, a keep_alive that is no
    duration, the step_audio extension), so that most such requests synthesize."""
    if isinstance(case.body, dict):
        case.body["model"] = model
        if tidy:
            for name in ("voice", "instructions", "step_audio"):
                case.body.pop(name, None)
            if isinstance(case.body.get("keep_alive"), str):
                case.body.pop("keep_alive")
    return case


def _as_upload(pair: tuple[Case, Case]) -> Case:
    """A multipart upload whose `payload` is a JSON speech request aimed at a served model."""
    upload, speech = pair
    upload.body = {"payload": json.dumps(speech.body)}
    return upload


def _with_body(case: Case, body: dict[str, Any]) -> Case:
    case.body = body
    return case


def aimed(schema: Any, operation: Any, voice_names: list[str]) -> list[st.SearchStrategy[Case]]:
    """Valid-looking cases aimed at what this server has, for the operations where random values miss it."""
    parameters = {parameter.name for parameter in operation.path_parameters}
    if "model_id" in parameters:
        model_ids = st.sampled_from(("piper-joe", "tone", "editx", "tts-1"))
        return [model_ids.flatmap(lambda model: operation.as_strategy(path_parameters={"model_id": model}))]
    if "name" in parameters:
        names = st.sampled_from([PRESET_VOICE, *voice_names])
        return [names.flatmap(lambda name: operation.as_strategy(path_parameters={"name": name}))]
    speech = schema.find_operation_by_label(SPEECH)
    speech_cases = st.builds(_speech_body, speech.as_strategy(), st.sampled_from(SPEECH_MODELS), st.booleans())
    if operation.label == SPEECH:
        return [speech_cases]
    if operation.label == SPEECH_UPLOAD:
        return [st.tuples(operation.as_strategy(), speech_cases).map(_as_upload)]
    if operation.label == EDIT:
        return [st.builds(_with_body, operation.as_strategy(), edit_bodies())]
    if operation.label == "POST /v1/voices":
        fields = st.fixed_dictionaries(
            {
                "audio": st.sampled_from(SOME_CLIPS),
                "name": st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,20}", fullmatch=True),
                "transcript": st.text(max_size=30) | st.just("What the clip says."),
                "locale": st.sampled_from(("en-US", "")),
            }
        )
        return [st.builds(_with_body, operation.as_strategy(), fields)]
    return []


def fuzz(
    base_url: str,
    schema: Any,
    operation: Any,
    mode: GenerationMode,
    statuses: Counter[int],
    codes: Counter[str],
    voice_names: list[str],
) -> None:
    drawn: list[st.SearchStrategy[Case]] = [operation.as_strategy(generation_mode=mode)]
    if mode is GenerationMode.POSITIVE:
        drawn += [*operation.get_strategies_from_examples(), *aimed(schema, operation, voice_names)]
    examples = SPEECH_EXAMPLES if operation.label in (SPEECH, SPEECH_UPLOAD) else EXAMPLES
    selected = NEGATIVE_CHECKS if mode is GenerationMode.NEGATIVE else RESPONSE_CHECKS

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=st.one_of(drawn))
    def run(case: Case) -> None:
        response = case.call(base_url=base_url, timeout=180)
        statuses[response.status_code] += 1
        if response.status_code >= 400 and "json" in response.headers.get("content-type", [""])[0]:
            if reference() is not None:
                validate("ErrorResponse", response.json())
            error = response.json()["error"]
            codes[f"{response.status_code} {error['code']} {error['param']}"] += 1
        if operation.label == "POST /v1/voices" and response.status_code == 201:
            voice_names.append(response.json()["name"])
        case.validate_response(response, checks=selected)

    run()


def plain_request_bodies(document: dict[str, Any]) -> dict[str, Any]:
    """Litestar wraps a request body schema that has examples as `{"allOf": [{"$ref": ...}], "examples": ...}`;
    schemathesis does not look through that wrapper for `format: binary` fields, so it would send a file field
    (the clip of POST /v1/audio/edit) as a plain text part. Point such bodies at their component directly."""
    for path_item in document["paths"].values():
        for operation in path_item.values():
            content = operation.get("requestBody", {}).get("content", {}) if isinstance(operation, dict) else {}
            for media in content.values():
                wrapped = media.get("schema", {}).get("allOf", [])
                if len(wrapped) == 1 and "$ref" in wrapped[0]:
                    media["schema"] = {"$ref": wrapped[0]["$ref"]}
    return document


def can_be_negated(operation: Any) -> bool:
    """Whether a schema-invalid request exists: a body, a query or header parameter, or a path parameter that is
    not any string. For the others schemathesis searches for a second or two and gives up (`Unsatisfiable`)."""
    definition = operation.definition.raw
    return "requestBody" in definition or any(
        parameter["in"] != "path" or parameter.get("schema") != {"type": "string"}
        for parameter in definition.get("parameters", [])
    )


def operation_of(result: Ok[Any] | Err[Any]) -> Any:
    assert isinstance(result, Ok), f"the schema has an operation schemathesis cannot read: {result.err()}"
    return result.ok()


def worker_pids() -> set[int]:
    """This process's worker children; the server thread starts them, so look at every thread's children."""
    return {pid for pid in thread_children(os.getpid()) if "service.worker" in cmdline(pid)}


def fuzzed_app(tmp_path: Path) -> Litestar:
    standin = write_standin(tmp_path / "upstream")
    (tmp_path / f"{PRESET_VOICE}.wav").write_bytes(clip(1.5))
    models_file = tmp_path / "models.toml"
    models_file.write_text(
        f'[[voices]]\nname = "{PRESET_VOICE}"\naudio = "{PRESET_VOICE}.wav"\ntranscript = "A preset voice."\n'
    )
    editx = ModelSpec.create(
        "editx",
        "step-audio",
        {
            "project_dir": str(standin.checkout),
            "models_dir": str(standin.models),
            "variant": "bnb",
            "require_cuda": False,
            "default_voice": PRESET_VOICE,
        },
        ModelPolicy(idle_timeout=30),
    )
    settings_ = Settings(
        data_dir=tmp_path / "data",
        models_config=models_file,
        max_input_chars=200,
        idle_timeout=30,
        # room for all three models: the fuzzer pins models (PATCH pinned, keep_alive -1), and with less room a
        # request for the third would rightly wait CAPACITY_WAIT and get 503/504; scripts/soak.py covers eviction
        max_loaded_models=3,
        # the start-up probe imports the stand-in's code (torch) once more; tests/engines/test_step_audio.py has it
        probe_engines=False,
        warm_spares=WITHOUT_SPARES,
        request_timeout=30,
        # Piper reads random Unicode character by character at speeds down to 0.25: a 200-character input takes
        # up to about 20 s of CPU here, and more on a busy machine; the watchdog has its own tests
        generation_timeout=120,
        max_upload_bytes=256 * 1024,
        shutdown_grace=2,
    )
    return create_app(settings_, (tone_model("tone", idle_timeout=30), editx))


@pytest.mark.parametrize("shard", SHARDS)
def test_every_operation_survives_fuzzing_and_conforms_to_its_schema(tmp_path: Path, shard: str) -> None:
    in_shard, min_cases = SHARDS[shard]
    statuses: Counter[int] = Counter()
    failures: dict[str, str] = {}
    voice_names: list[str] = []
    started = time.monotonic()
    with served(fuzzed_app(tmp_path)) as base_url:
        schema = schemathesis.openapi.from_dict(plain_request_bodies(httpx.get(f"{base_url}/docs/openapi.json").json()))
        operations = [operation_of(result) for result in schema.get_all_operations()]
        operations = [operation for operation in operations if in_shard(operation.label)]
        assert operations, f"shard {shard} has no operation"
        for operation in operations:
            modes = (
                (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
                if can_be_negated(operation)
                else (GenerationMode.POSITIVE,)
            )
            for mode in modes:
                before = statuses.copy()
                codes: Counter[str] = Counter()
                operation_started = time.monotonic()
                try:
                    fuzz(base_url, schema, operation, mode, statuses, codes, voice_names)
                except Unsatisfiable:
                    pass  # no schema-invalid request exists (no parameters, or only path strings): nothing to send
                except (Exception, BaseExceptionGroup) as error:  # collected: one run reports every failing operation
                    failures[f"{operation.label} ({mode.value})"] = str(error)
                seen = statuses - before
                seconds = time.monotonic() - operation_started
                print(
                    f"{operation.label} ({mode.value}): {seen.total()} cases in {seconds:.1f} s "
                    f"{dict(sorted(seen.items()))} {dict(codes)}"
                )
        workers_while_serving = len(worker_pids())
    assert not worker_pids(), "workers outlived the server"
    cases = statuses.total()
    print(
        f"{shard}: fuzzed {len(operations)} operations with {cases} cases in {time.monotonic() - started:.1f} s; "
        f"statuses: {dict(sorted(statuses.items()))}; workers before shutdown: {workers_while_serving}"
    )
    assert not failures, "\n\n".join(f"== {label}\n{message}" for label, message in failures.items())
    assert not any(status >= 500 for status in statuses)
    assert cases >= min_cases
