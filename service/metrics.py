"""Prometheus metrics: lifecycle counters from the loader's events, gauges read from its slots at scrape time."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from service.lazy_loader import EventRecord, LifecycleEvent, SlotState

if TYPE_CHECKING:
    from service.lazy_loader import LazyLoader
    from service.lifecycle.spares import SparePool

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
RTF_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)
REPLICA_STATES = (SlotState.LOADING, SlotState.LOADED, SlotState.UNLOADING)


class _SlotCollector(Collector):
    def __init__(self, loader: LazyLoader[Any]) -> None:
        self._loader = loader

    def collect(self) -> Iterator[GaugeMetricFamily]:
        loaded = GaugeMetricFamily("tts_model_loaded", "1 while the model is loaded in a worker", labels=["model"])
        in_flight = GaugeMetricFamily("tts_requests_in_flight", "Requests being synthesized", labels=["model"])
        queued = GaugeMetricFamily("tts_requests_queued", "Requests waiting for a load or a turn", labels=["model"])
        replicas = GaugeMetricFamily(
            "tts_model_replicas", "The model's worker processes, by state", labels=["model", "state"]
        )
        replicas_max = GaugeMetricFamily(
            "tts_model_replicas_max", "Replicas the model may scale out to", labels=["model"]
        )
        for snapshot in self._loader.snapshots_now():
            loaded.add_metric([snapshot.model], 1.0 if snapshot.loaded else 0.0)
            in_flight.add_metric([snapshot.model], snapshot.in_flight)
            queued.add_metric([snapshot.model], snapshot.queued)
            states = Tally(replica.state for replica in snapshot.replicas)
            for state in REPLICA_STATES:
                replicas.add_metric([snapshot.model, state.value], states[state])
            replicas_max.add_metric([snapshot.model], snapshot.policy.replicas_max)
        yield from (loaded, in_flight, queued, replicas, replicas_max)


class _SpareCollector(Collector):
    def __init__(self, spares: SparePool) -> None:
        self._spares = spares

    def collect(self) -> Iterator[GaugeMetricFamily]:
        ready = GaugeMetricFamily(
            "tts_warm_spares", "Warm spare workers ready (imports done, no model)", labels=["engine"]
        )
        configured = GaugeMetricFamily("tts_warm_spares_configured", "Warm spare workers kept", labels=["engine"])
        resident = GaugeMetricFamily(
            "tts_warm_spare_rss_bytes", "Resident memory of the ready warm spare workers", labels=["engine"]
        )
        totals: dict[str, list[int]] = {}
        for figures in self._spares.figures_now():
            total = totals.setdefault(figures.engine, [0, 0, 0])
            total[0] += figures.ready
            total[1] += figures.configured
            total[2] += figures.rss_bytes
        for engine, (ready_count, configured_count, rss) in totals.items():
            ready.add_metric([engine], ready_count)
            configured.add_metric([engine], configured_count)
            resident.add_metric([engine], rss)
        yield from (ready, configured, resident)


class Metrics:
    """One registry per app, so several apps (tests) never share counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.loads = Counter("tts_model_loads", "Model loads by outcome", ["model", "outcome"], registry=self.registry)
        self.load_seconds = Histogram(
            "tts_model_load_seconds",
            "Time to load a model into a worker",
            ["model"],
            buckets=LOAD_BUCKETS,
            registry=self.registry,
        )
        self.unloads = Counter(
            "tts_model_unloads", "Model unloads by reason", ["model", "reason"], registry=self.registry
        )
        self.watchdog_kills = Counter(
            "tts_watchdog_kills", "Workers killed for generating past the limit", ["model"], registry=self.registry
        )
        self.streams_aborted = Counter(
            "tts_streams_aborted",
            "Streamed responses ended unfinished, by cause (worker_crashed, generation_timeout, client_stalled, ...)",
            ["model", "cause"],
            registry=self.registry,
        )
        self.requests = Counter("tts_requests", "Finished speech requests", ["model", "cold"], registry=self.registry)
        self.latency = Histogram(
            "tts_request_seconds",
            "Speech request latency",
            ["model", "cold"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.first_audio = Histogram(
            "tts_time_to_first_audio_seconds",
            "Time until the first audio chunk",
            ["model", "cold"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.audio_seconds = Counter(
            "tts_audio_seconds", "Seconds of audio produced", ["model"], registry=self.registry
        )
        self.real_time_factor = Histogram(
            "tts_real_time_factor",
            "Request seconds per second of audio",
            ["model"],
            buckets=RTF_BUCKETS,
            registry=self.registry,
        )

    def watch(self, loader: LazyLoader[Any]) -> None:
        self.registry.register(_SlotCollector(loader))
        loader.listeners.append(self.lifecycle_event)

    def watch_spares(self, spares: SparePool) -> None:
        self.registry.register(_SpareCollector(spares))

    def lifecycle_event(self, record: EventRecord) -> None:
        model, fields = record.model, record.fields
        if record.event is LifecycleEvent.LOADED:
            self.loads.labels(model, "loaded").inc()
            self.load_seconds.labels(model).observe(fields["seconds"])
        elif record.event is LifecycleEvent.LOAD_FAILED:
            self.loads.labels(model, "failed").inc()
        elif record.event is LifecycleEvent.LOAD_REFUSED:
            self.loads.labels(model, "refused").inc()
        elif record.event is LifecycleEvent.UNLOADED:
            self.unloads.labels(model, str(fields["reason"])).inc()
        elif record.event is LifecycleEvent.WORKER_EXITED:
            self.unloads.labels(model, "crash").inc()
            if fields.get("watchdog"):
                self.watchdog_kills.labels(model).inc()

    def request_finished(
        self, model: str, cold: bool, seconds: float, audio_seconds: float, time_to_first_audio: float | None
    ) -> None:
        labels = (model, "true" if cold else "false")
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)
        if time_to_first_audio is not None:
            self.first_audio.labels(*labels).observe(time_to_first_audio)
        self.audio_seconds.labels(model).inc(audio_seconds)
        if audio_seconds > 0:
            self.real_time_factor.labels(model).observe(seconds / audio_seconds)

    def stream_aborted(self, model: str, cause: str) -> None:
        self.streams_aborted.labels(model, cause).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
