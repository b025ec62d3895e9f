"""A speech outcome as an HTTP response: the audio, the X- headers that tell how it was made, and OpenAI's
server-sent events for `stream_format: sse`."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator

from litestar import Response
from litestar.response import Stream

from service.controllers.errors import as_api_error
from service.errors import StreamAborted
from service.speech.service import SpeechOutcome


def speech_headers(outcome: SpeechOutcome) -> dict[str, str]:
    """The X- headers of a speech or edit response; empty values are left out."""
    headers = {
        "X-Ignored-Fields": ",".join(outcome.ignored_fields),
        "X-Model": outcome.model,
        "X-Mode": outcome.mode,
        "X-Edits": ",".join(f"{step.mode}={step.edit_info or ''}" for step in outcome.edits),
        "X-Voice": outcome.voice,
        "X-Sample-Rate": str(outcome.sample_rate),
        "X-Cold-Start": "true" if outcome.cold else "false",
        "X-Model-Load-Seconds": f"{outcome.load_seconds:.3f}",
        "X-Queue-Seconds": f"{outcome.queue_seconds:.3f}",
        "X-Audio-Seconds": "" if outcome.audio_seconds is None else f"{outcome.audio_seconds:.3f}",
        "X-Generation-Seconds": "" if outcome.generation_seconds is None else f"{outcome.generation_seconds:.3f}",
    }
    return {name: value for name, value in headers.items() if value}


def _event(event: dict[str, object]) -> bytes:
    return f"data: {json.dumps(event)}\n\n".encode()


async def server_sent_events(outcome: SpeechOutcome, audio: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """OpenAI's speech SSE stream: `speech.audio.delta` events with base64 audio, then `speech.audio.done` with the
    usage; a stream that cannot be finished ends with an `error` event (OpenAI's error object) instead, and
    unfinished."""
    try:
        async for chunk in audio:
            yield _event({"type": "speech.audio.delta", "audio": base64.b64encode(chunk).decode()})
    except StreamAborted as aborted:
        if aborted.failure is not None:
            yield _event({"type": "error", **as_api_error(aborted.failure).body()})
        raise
    usage = outcome.usage()
    yield _event(
        {
            "type": "speech.audio.done",
            "usage": {
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
                "total_tokens": usage.total_tokens,
            },
        }
    )


def speech_response(outcome: SpeechOutcome, *, sse: bool = False) -> Response[bytes] | Stream:
    """The whole file, or the stream of encoded audio (as server-sent events with `sse`)."""
    headers = speech_headers(outcome)
    if isinstance(outcome.audio, bytes):
        return Response(outcome.audio, media_type=outcome.media_type, headers=headers)
    if sse:
        return Stream(server_sent_events(outcome, outcome.audio), media_type="text/event-stream", headers=headers)
    return Stream(outcome.audio, media_type=outcome.media_type, headers=headers)
