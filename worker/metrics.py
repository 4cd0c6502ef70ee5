"""Prometheus metrics: what a run or a consumer did, for the monitoring that watches it.

One registry per process (not the library's global one, so tests and embedders stay apart).
`consume` serves it on ``--metrics-port`` (``/metrics``, and ``/healthz``); `run` writes it at
the end to a node-exporter textfile (``--metrics-textfile``) or pushes it to a Pushgateway
(``--pushgateway``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import structlog
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    push_to_gateway,
    write_to_textfile,
)

from worker.client import Answer
from worker.models import Result

log = structlog.get_logger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The metrics of one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "cancel_orders_requests",
            "Requests sent to the API, by HTTP status (or transport failure)",
            ["status"],
            registry=r,
        )
        self.outcomes = Counter(
            "cancel_orders_outcomes",
            "Orders finished, by outcome and the API's error code",
            ["outcome", "error_code"],
            registry=r,
        )
        self.latency = Histogram(
            "cancel_orders_request_duration_seconds",
            "Time from sending a request to its answer",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "cancel_orders_retries",
            "Requests sent again, by reason (retry, throttle, quota, reauth, outage)",
            ["reason"],
            registry=r,
        )
        self.waits = Counter(
            "cancel_orders_wait_seconds",
            "Seconds spent waiting, by kind (rate_limit, retry_after, backoff)",
            ["kind"],
            registry=r,
        )
        self.in_flight = Gauge(
            "cancel_orders_requests_in_flight", "Requests on the wire now", registry=r
        )
        self.token_refreshes = Counter(
            "cancel_orders_token_refreshes", "Access tokens fetched", registry=r
        )
        self.circuit_open = Gauge(
            "cancel_orders_circuit_open", "1 while the circuit breaker is open", registry=r
        )

    def answered(self, answer: Answer) -> None:
        """One answer (or transport failure) came back."""
        self.requests.labels(str(answer.status) if answer.status else answer.failure).inc()
        self.latency.observe(answer.latency_ms / 1000.0)

    def finished(self, result: Result) -> None:
        """One order reached its outcome for this run."""
        self.outcomes.labels(result.outcome.value, result.error_code or "").inc()

    def waited(self, kind: str, seconds: float) -> None:
        """Time spent waiting."""
        if seconds > 0:
            self.waits.labels(kind).inc(seconds)

    def exposition(self) -> bytes:
        """The text format, as /metrics serves it."""
        return generate_latest(self.registry)

    def write_textfile(self, path: Path) -> None:
        """Write for node-exporter's textfile collector (atomically; readable by it)."""
        write_to_textfile(str(path), self.registry)
        os.chmod(path, 0o644)  # noqa: PTH101 - node-exporter runs as another user
        log.info("metrics_written", path=str(path))

    def push(self, url: str, job: str, command: str) -> None:
        """Push to a Pushgateway; a failure is logged, never fatal."""
        try:
            push_to_gateway(url, job=job, registry=self.registry, grouping_key={"command": command})
        except OSError as exc:
            log.error("metrics_push_failed", url=url, error=str(exc))  # noqa: TRY400 - expected
        else:
            log.info("metrics_pushed", url=url)


async def serve(
    metrics: Metrics, host: str, port: int, healthy: Callable[[], bool]
) -> web.AppRunner:
    """Serve ``/metrics`` and ``/healthz`` until the returned runner is cleaned up."""

    async def scrape(_request: web.Request) -> web.Response:
        body = metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def health(_request: web.Request) -> web.Response:
        ok = healthy()
        return web.Response(status=200 if ok else 503, text="ok\n" if ok else "stopping\n")

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    app.router.add_get("/healthz", health)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("metrics_serving", host=host, port=port)
    return runner
