"""Prometheus metrics of one server (its own registry, so several servers can share a process)."""

from __future__ import annotations


class Metrics:
    """Counters, gauges and histograms exported at ``GET /metrics``.

    ``adapter`` labels are the adapter name, ``base`` for the base model, or
    ``composed`` for a per-request weighted set.
    """

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        self.requests = Counter("adaptrix_requests", "Completion requests answered, by adapter and outcome",
                                ["adapter", "endpoint", "status"], registry=r)
        self.tokens = Counter("adaptrix_generated_tokens", "Tokens generated, by adapter", ["adapter"], registry=r)
        self.prompt_tokens = Counter("adaptrix_prompt_tokens", "Prompt tokens processed, by adapter", ["adapter"],
                                     registry=r)
        self.cancelled = Counter("adaptrix_cancelled_requests",
                                 "Requests whose client went away before the end (generation stopped)",
                                 ["adapter"], registry=r)
        self.queue_depth = Gauge("adaptrix_queue_depth", "Requests waiting for a slot", registry=r)
        self.running = Gauge("adaptrix_running_batch_size", "Requests decoding right now", registry=r)
        buckets = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
        self.ttft = Histogram("adaptrix_time_to_first_token_seconds", "Time from arrival to the first token",
                              ["adapter"], buckets=buckets, registry=r)
        self.itl = Histogram("adaptrix_inter_token_latency_seconds", "Time between two tokens of one request",
                             ["adapter"], buckets=buckets, registry=r)
        self.loaded = Gauge("adaptrix_loaded_adapters", "Adapters resident in memory", registry=r)
        self.loads = Counter("adaptrix_adapter_loads", "Adapters loaded at run time (/v1/load_lora_adapter)",
                             registry=r)
        self.unloads = Counter("adaptrix_adapter_unloads", "Adapters unloaded at run time", registry=r)
        self.evictions = Counter("adaptrix_adapter_evictions", "Adapters evicted by the residency limit (LRU)",
                                 registry=r)
        self.validation_failures = Counter("adaptrix_adapter_validation_failures",
                                           "Adapters refused by validation", registry=r)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
