"""Prometheus metrics of a running server: requests, tokens, time to first token, queue depth.

Each server has its own CollectorRegistry (tests start several in one process); `/metrics` renders it in
Prometheus' text format.

Examples:
    m = Metrics({"tiny": engine}); m.request("/v1/completions", 200)
    text, content_type = m.render()
"""

from __future__ import annotations

# Latency buckets in seconds: from a few ms (a tiny model's token) to minutes (a long answer on a CPU).
_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_PER_TOKEN = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2)


class Metrics:
    """The server's counters, histograms and gauges (names start with llmctl_)."""

    def __init__(self, engines: dict):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

        disable_created_metrics()  # the *_created series only repeat the start time
        self.registry = reg = CollectorRegistry()
        self.requests = Counter(
            "llmctl_requests",
            "HTTP requests answered, by endpoint and status code",
            ["endpoint", "status"],
            registry=reg,
        )
        self.prompt_tokens = Counter("llmctl_prompt_tokens", "prompt tokens processed", ["model"], registry=reg)
        self.generation_tokens = Counter("llmctl_generation_tokens", "tokens generated", ["model"], registry=reg)
        self.cancelled = Counter(
            "llmctl_requests_cancelled", "requests whose client went away before the end", ["model"], registry=reg
        )
        self.ttft = Histogram(
            "llmctl_time_to_first_token_seconds",
            "time from arrival to the first token",
            ["model"],
            buckets=_LATENCY,
            registry=reg,
        )
        self.per_token = Histogram(
            "llmctl_time_per_output_token_seconds",
            "mean time per token after the first",
            ["model"],
            buckets=_PER_TOKEN,
            registry=reg,
        )
        self.duration = Histogram(
            "llmctl_request_duration_seconds",
            "time from arrival to the last token",
            ["model"],
            buckets=_LATENCY,
            registry=reg,
        )
        queue = Gauge("llmctl_queue_depth", "sequences waiting for a batch slot", ["model"], registry=reg)
        running = Gauge("llmctl_running_sequences", "sequences being generated", ["model"], registry=reg)
        for name, engine in engines.items():
            queue.labels(name).set_function(engine.queue_depth)
            running.labels(name).set_function(engine.running)

    def request(self, endpoint: str, status: int) -> None:
        self.requests.labels(endpoint, str(status)).inc()

    def finished(self, model: str, req, prompt_tokens: int, cancelled: bool = False) -> None:
        """Record one engine request's tokens and latencies."""
        self.prompt_tokens.labels(model).inc(prompt_tokens)
        self.generation_tokens.labels(model).inc(req.completion_tokens)
        if cancelled:
            self.cancelled.labels(model).inc()
            return
        if req.first_token is not None:
            self.ttft.labels(model).observe(req.first_token - req.submitted)
        if req.finished is not None:
            self.duration.labels(model).observe(req.finished - req.submitted)
            per_answer = req.completion_tokens / max(1, req.n)
            if req.first_token is not None and per_answer > 1:
                self.per_token.labels(model).observe((req.finished - req.first_token) / (per_answer - 1))

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
