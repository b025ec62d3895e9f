"""One port for text-to-speech models: web UI, REST API and an OpenAI-compatible speech endpoint."""

__version__ = "0.1.0"
