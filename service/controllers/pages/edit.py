"""The Clone & edit page: clone a voice from a reference clip (uploaded, recorded in the browser, or from the voice
library), then edit the result step by step. Every step runs through SpeechService (its planner's plan or plan_edit,
then speak), the same path as POST /v1/audio/speech and /v1/audio/edit; the history (audio and what made each step)
is kept on the server under <data dir>/ui/ by EditHistory, so any step can be played, downloaded or undone to."""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from typing import Any

import anyio
import soundfile
from litestar import Controller, Response, get, post
from litestar.datastructures import State, UploadFile
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, MultipartBody, URLEncodedBody
from litestar.plugins.htmx import HTMXRequest
from litestar.response import Redirect, Template

from service.controllers.errors import ApiError
from service.controllers.pages.rendering import render
from service.engines.base import MAX_EDIT_ITERATIONS, AudioClip, EditRequest
from service.errors import NotFound
from service.library.edit_history import EditHistory, Session, Step
from service.library.voices import VoiceError, VoiceLibrary, read_clip
from service.models.catalog import Catalog, ModelSpec
from service.settings import Settings
from service.speech.schema import SpeechRequest, StepAudioExtension
from service.speech.service import SpeechOutcome, SpeechService

MODE_LABELS = {
    "emotion": "Emotion",
    "style": "Style",
    "speed": "Speed",
    "paralinguistic": "Paralinguistic (add sounds)",
    "denoise": "Denoise",
    "vad": "Trim silence (VAD)",
}


def provide_history(state: State, settings: NamedDependency[Settings]) -> EditHistory:
    """One EditHistory per app (it holds the per-session locks), under <data dir>/ui/."""
    history = state.get("edit_history")
    if not isinstance(history, EditHistory) or history.root != settings.data_dir / "ui":
        history = EditHistory(settings.data_dir / "ui")
        state["edit_history"] = history
    return history


@dataclass
class StartForm:
    """Step 0: a clone of `target_text` in the reference's voice, or, without target text, the reference itself."""

    model: str
    source: str = "upload"
    reference: UploadFile | None = None
    voice: str | None = None
    reference_text: str = ""
    target_text: str = ""
    language: str = ""


@dataclass
class EditForm:
    """One edit of the current step; `edit_info` for emotion, style and speed, `text` for paralinguistic."""

    mode: str
    edit_info: str | None = None
    text: str | None = None
    n_edit_iter: int = 1


def _wav(clip: AudioClip) -> bytes:
    output = io.BytesIO()
    soundfile.write(output, clip.samples, clip.sample_rate, format="WAV", subtype="PCM_16")
    return output.getvalue()


def _step(kind: str, transcript: str, outcome: SpeechOutcome, started: float, **fields: Any) -> Step:
    return Step(
        index=0,
        kind=kind,
        transcript=transcript,
        seconds=round(outcome.audio_seconds or 0.0, 3),
        took=round(time.perf_counter() - started, 3),
        cold=outcome.cold,
        load_seconds=round(outcome.load_seconds, 3),
        **fields,
    )


def _editing_model(catalog: Catalog, model: str) -> ModelSpec:
    spec = catalog.resolve(model)
    if not spec.edits:
        raise ApiError(400, f"model {spec.id!r} does not edit audio", param="model", code="unsupported_value")
    return spec


class EditPagesController(Controller):
    path = "/edit"
    include_in_schema = False
    dependencies = {"history": Provide(provide_history, sync_to_thread=False)}  # noqa: RUF012

    async def _start_context(self, catalog: Catalog, voices: VoiceLibrary, settings: Settings) -> dict[str, Any]:
        editors = [spec for spec in catalog.servable() if spec.edits]
        default_editor = catalog.editing_model(None) if editors else None
        return {
            "editors": editors,
            "default_editor": default_editor.id if default_editor else None,
            "unavailable": catalog.unavailable,
            "library": await anyio.to_thread.run_sync(voices.all),
            "language_tags": default_editor.capabilities.language_tags if default_editor else (),
            "max_audio_seconds": settings.max_audio_seconds,
            "max_input_chars": settings.max_input_chars,
            "session": None,
            "notice": None,
        }

    def _workspace(self, request: HTMXRequest, catalog: Catalog, session: Session, **options: Any) -> Template:
        """The edit page, or just its workspace (history and next edit) for htmx."""
        context = self._workspace_context(catalog, session)
        return render(request, "edit.html", "partials/edit_workspace.html", context, active="edit", **options)

    def _workspace_context(self, catalog: Catalog, session: Session) -> dict[str, Any]:
        spec = catalog.specs.get(session.model)
        options = dict(spec.capabilities.edit_options) if spec is not None else {}
        return {
            "session": session,
            "edit_options": options,
            "mode_labels": MODE_LABELS,
            "paralinguistic_tags": spec.capabilities.paralinguistic_tags if spec is not None else (),
            "max_iterations": MAX_EDIT_ITERATIONS,
            "model_missing": spec is None,
        }

    @get("/", operation_id="editPage")
    async def start_page(
        self,
        request: HTMXRequest,
        catalog: NamedDependency[Catalog],
        voices: NamedDependency[VoiceLibrary],
        settings: NamedDependency[Settings],
    ) -> Template:
        """The start form: model, reference (upload, recording or library voice), transcripts, language."""
        context = await self._start_context(catalog, voices, settings)
        return render(
            request, "edit.html", "partials/edit_start.html", context, active="edit", partial_for=("edit-area",)
        )

    @post("/", operation_id="editPageStart", status_code=200)
    async def start(
        self,
        request: HTMXRequest,
        catalog: NamedDependency[Catalog],
        voices: NamedDependency[VoiceLibrary],
        speech: NamedDependency[SpeechService],
        history: NamedDependency[EditHistory],
        data: MultipartBody[StartForm],
    ) -> Template | Redirect:
        """Make step 0 and open the history at /edit/<session>."""
        started = time.perf_counter()
        spec = _editing_model(catalog, data.model)
        languages = spec.capabilities.language_tags
        if data.language and data.language not in languages:
            raise ApiError(400, f"language must be one of {', '.join(languages)}", param="language")
        target = f"{data.language}{data.target_text.strip()}" if data.target_text.strip() else ""
        if data.source == "voice":
            if not data.voice:
                raise ApiError(400, "choose a voice from the library", param="voice", code="voice_required")
            name = data.voice
            try:
                voice, clip = await anyio.to_thread.run_sync(voices.clip, name)
            except VoiceError as error:
                raise ApiError(400, str(error), param="voice", code="invalid_value") from error
            reference_text, source = voice.transcript, f"library voice {voice.name}"
            request_body = SpeechRequest(model=spec.id, input=target, voice=name, response_format="wav")
            uploads: dict[str, bytes] = {}
        else:
            audio = await data.reference.read() if data.reference is not None else b""
            if not audio:
                raise ApiError(400, "choose an audio file or record one", param="reference", code="invalid_value")
            clip = await speech.decoder.read(audio, "reference")
            reference_text, source = data.reference_text.strip(), "uploaded clip"
            if not reference_text:
                raise ApiError(400, "say what the reference clip says", param="reference_text", code="invalid_value")
            extension = StepAudioExtension(mode="clone", prompt_text=reference_text)
            request_body = SpeechRequest(model=spec.id, input=target, response_format="wav", step_audio=extension)
            uploads = {"prompt_audio_file": audio}
        if target:
            outcome = await speech.speak(await speech.planner.plan(request_body, uploads))
            assert isinstance(outcome.audio, bytes)
            first, wav = _step("clone", target, outcome, started), outcome.audio
        else:
            conformed = speech.decoder.conform(clip)
            first = Step(index=0, kind="reference", transcript=reference_text, seconds=conformed.seconds)
            wav = await anyio.to_thread.run_sync(_wav, conformed)
        session = await anyio.to_thread.run_sync(
            lambda: history.create(spec.id, source, reference_text, target, first, wav)
        )
        if not request.htmx:
            return Redirect(f"/edit/{session.id}", status_code=303)
        return self._workspace(request, catalog, session, push_url=f"/edit/{session.id}")

    @get("/{session_id:str}", operation_id="editPageSession")
    async def session_page(
        self,
        request: HTMXRequest,
        catalog: NamedDependency[Catalog],
        voices: NamedDependency[VoiceLibrary],
        settings: NamedDependency[Settings],
        history: NamedDependency[EditHistory],
        session_id: FromPath[str],
    ) -> Template:
        """A history: every step with its audio, and the form for the next edit."""
        try:
            session = await anyio.to_thread.run_sync(history.get, session_id)
        except NotFound as error:
            context = await self._start_context(catalog, voices, settings) | {"notice": error.message}
            return render(request, "edit.html", "partials/edit_start.html", context, active="edit", status_code=404)
        return self._workspace(request, catalog, session, partial_for=("edit-area",))

    @post("/{session_id:str}/steps", operation_id="editPageStep", status_code=200)
    async def add_step(
        self,
        request: HTMXRequest,
        catalog: NamedDependency[Catalog],
        speech: NamedDependency[SpeechService],
        history: NamedDependency[EditHistory],
        session_id: FromPath[str],
        data: URLEncodedBody[EditForm],
    ) -> Template:
        """Apply one edit (n_edit_iter times) to the current step; the result becomes the next step."""
        started = time.perf_counter()
        async with history.lock(session_id):
            session = await anyio.to_thread.run_sync(history.get, session_id)
            current = session.current
            path = history.audio_path(session, current.index)
            clip = speech.decoder.conform(await anyio.to_thread.run_sync(read_clip, path))
            text = data.text if data.mode == "paralinguistic" else None
            edit = EditRequest(clip, current.transcript, data.mode, data.edit_info or None, text, data.n_edit_iter)
            plan = await speech.planner.plan_edit(session.model, edit, "wav", None)
            outcome = await speech.speak(plan)
            assert isinstance(outcome.audio, bytes)
            transcript = (text or "").strip() or current.transcript
            step = _step(
                data.mode,
                transcript,
                outcome,
                started,
                edit_info=plan.request.edit_info if isinstance(plan.request, EditRequest) else None,
                text=text,
                iterations=data.n_edit_iter,
            )
            audio = outcome.audio
            session = await anyio.to_thread.run_sync(lambda: history.append(session, step, audio))
        return self._workspace(request, catalog, session)

    @post("/{session_id:str}/undo/{index:int}", operation_id="editPageUndo", status_code=200)
    async def undo(
        self,
        request: HTMXRequest,
        catalog: NamedDependency[Catalog],
        history: NamedDependency[EditHistory],
        session_id: FromPath[str],
        index: FromPath[int],
    ) -> Template:
        """Go back to step `index`: later steps are deleted."""
        async with history.lock(session_id):
            session = await anyio.to_thread.run_sync(history.get, session_id)
            session = await anyio.to_thread.run_sync(history.truncate, session, index)
        return self._workspace(request, catalog, session)

    @post("/{session_id:str}/reset", operation_id="editPageReset", status_code=200)
    async def reset(
        self,
        request: HTMXRequest,
        catalog: NamedDependency[Catalog],
        voices: NamedDependency[VoiceLibrary],
        settings: NamedDependency[Settings],
        history: NamedDependency[EditHistory],
        session_id: FromPath[str],
    ) -> Template | Redirect:
        """Start over: the history and its audio are deleted."""
        async with history.lock(session_id):
            await anyio.to_thread.run_sync(history.delete, session_id)
        if not request.htmx:
            return Redirect("/edit", status_code=303)
        context = await self._start_context(catalog, voices, settings)
        return render(request, "edit.html", "partials/edit_start.html", context, active="edit", push_url="/edit")

    @get("/{session_id:str}/steps/{index:int}/audio", operation_id="editPageAudio", media_type="audio/wav")
    async def audio(
        self, history: NamedDependency[EditHistory], session_id: FromPath[str], index: FromPath[int]
    ) -> Response[bytes]:
        """A step's audio as WAV."""
        session = await anyio.to_thread.run_sync(history.get, session_id)
        path = history.audio_path(session, index)
        filename = f"edit-step-{index}-{session.steps[index].kind}.wav"
        headers = {"Content-Disposition": f'inline; filename="{filename}"', "Cache-Control": "no-cache"}
        return Response(await anyio.Path(path).read_bytes(), media_type="audio/wav", headers=headers)
