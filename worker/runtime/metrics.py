"""Prometheus metrics: what a run or a consumer did, for the monitoring that watches it.

One registry per process (not the library's global one, so tests and embedders stay apart),
made when the metrics are first exported: a run that exports nothing never loads
prometheus-client.
`consume` serves it on ``--metrics-port`` (``/metrics``, and ``/healthz``); `run` writes it at
the end to a node-exporter textfile (``--metrics-textfile``) or pushes it to a Pushgateway
(``--pushgateway``).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import structlog

from worker.domain.answer import Answer
from worker.runtime.files import replaced
from worker.settings import safe_url

if TYPE_CHECKING:
    from aiohttp import web
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric
from worker.domain.models import Result

log = structlog.get_logger(__name__)

_STATUS_KEYS = {code: str(code) for code in range(100, 600)}  # an answer's status as its label
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The metrics of one process, counted in plain attributes (every update happens on the
    event loop's thread, once or twice per request: no lock, no label lookup) and turned into
    Prometheus families only when they are collected."""

    def __init__(self, job: str = "") -> None:
        self.job = job  # the `job` label of every series (two jobs on one host never share one)
        self.requests: Counter[str] = Counter()  # status or transport failure -> requests
        self.outcomes: Counter[tuple[str, str]] = Counter()  # (outcome, error code) -> orders
        self.retries: Counter[str] = Counter()  # reason -> requests sent again
        self.waits: defaultdict[str, float] = defaultdict(float)  # kind -> seconds
        self.in_flight = 0
        self.token_refreshes = 0
        self.circuit_open = 0
        self._buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # per bucket, not cumulative
        self._latency_sum = 0.0
        self._registry: CollectorRegistry | None = None
        # How the run ended, for "did not run" and "did not succeed" alerts (None: running).
        self.last_exit_code: int | None = None
        self.last_end_s: float | None = None
        self.last_success_s: float | None = None  # None: keep the one recorded before

    @property
    def registry(self) -> CollectorRegistry:
        """The prometheus-client registry of these metrics."""
        if self._registry is None:
            from prometheus_client import CollectorRegistry  # noqa: PLC0415 - see the docstring

            self._registry = CollectorRegistry()
            self._registry.register(_Collector(self))
        return self._registry

    def answered(self, answer: Answer) -> None:
        """One answer (or transport failure) came back."""
        status = answer.status
        key = _STATUS_KEYS.get(status) if status else str(answer.failure)
        self.requests[key or str(status)] += 1
        seconds = answer.latency_ms / 1000.0
        self._buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self._latency_sum += seconds

    def finished(self, result: Result) -> None:
        """One order reached its outcome for this run."""
        self.outcomes[result.outcome._value_, result.error_code or ""] += 1

    def circuit_changed(self, is_open: bool) -> None:
        """The circuit breaker opened or closed (its ``on_state``)."""
        self.circuit_open = int(is_open)

    def waited(self, kind: str, seconds: float) -> None:
        """Time spent waiting."""
        if seconds > 0:
            self.waits[kind] += seconds

    def histogram(self) -> tuple[list[tuple[str, float]], float]:
        """Cumulative latency buckets (with +Inf) and the sum of latencies."""
        running = 0
        cumulative: list[tuple[str, float]] = []
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), self._buckets, strict=True):
            running += count
            cumulative.append(("+Inf" if bound == float("inf") else str(bound), running))
        return cumulative, self._latency_sum

    def exposition(self) -> bytes:
        """The text format, as /metrics serves it."""
        from prometheus_client import generate_latest  # noqa: PLC0415

        return generate_latest(self.registry)

    def ended(self, exit_code: int) -> None:
        """The run ended: exit 0 and 1 are successes (1: finished, some orders need a
        person), 2 and above are not."""
        now = time.time()
        self.last_exit_code = exit_code
        self.last_end_s = now
        if exit_code in (0, 1):
            self.last_success_s = now

    def write_textfile(self, path: Path) -> None:
        """Write for node-exporter's textfile collector (atomically; readable by it). A run
        that did not succeed keeps the last success time the file held."""
        if self.last_success_s is None and path.is_file():
            self.last_success_s = _recorded(path, LAST_SUCCESS)
        from prometheus_client import generate_latest  # noqa: PLC0415

        # Readable by node-exporter, which runs as another user; the mode is set on the file
        # before it takes the name.
        with replaced(path, 0o644) as out:
            out.write(generate_latest(self.registry).decode())
        log.info("metrics_written", path=str(path))

    def push(self, url: str, command: str) -> None:
        """Push to a Pushgateway; a failure is logged, never fatal."""
        from prometheus_client import pushadd_to_gateway  # noqa: PLC0415
        from prometheus_client.exposition import (  # noqa: PLC0415
            basic_auth_handler,
            default_handler,
        )

        parts = urlsplit(url)
        user, password = parts.username, parts.password
        bare = parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]).geturl()

        def handler(
            url: str,
            method: str,
            timeout: float | None,
            headers: list[tuple[str, str]],
            data: bytes,
        ) -> Callable[[], None]:
            """Basic auth from the URL's userinfo, which urllib would take for a host name."""
            return basic_auth_handler(url, method, timeout, headers, data, user, password)

        try:
            # POST (pushadd): only the families pushed now are replaced, so a run that did not
            # succeed, which has no last-success family, leaves the last success recorded.
            pushadd_to_gateway(
                bare,
                job=self.job or "cancel-orders",
                registry=self.registry,
                grouping_key={"command": command},
                handler=handler if user is not None else default_handler,
            )
        except OSError as exc:
            log.error("metrics_push_failed", url=safe_url(url), error=str(exc))  # noqa: TRY400 - expected
        else:
            log.info("metrics_pushed", url=safe_url(url))


class _Collector:
    """Builds the metric families from a Metrics' counts at collection time."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        """The families, as prometheus-client asks for them."""
        from prometheus_client.core import (  # noqa: PLC0415
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        m = self._m
        job = m.job

        def counter(name: str, doc: str, labels: list[str], items: Iterable[Any]) -> Metric:
            family = CounterMetricFamily(name, doc, labels=["job", *labels])
            for key, value in sorted(items):
                family.add_metric([job, *(key if isinstance(key, tuple) else [key])], value)
            return family

        def one(kind: type[Any], name: str, doc: str, value: float) -> Metric:
            family: Any = kind(name, doc, labels=["job"])
            family.add_metric([job], value)
            metric: Metric = family
            return metric

        yield counter(
            "cancel_orders_requests",
            "Requests sent to the API, by HTTP status (or transport failure)",
            ["status"],
            m.requests.items(),
        )
        yield counter(
            "cancel_orders_outcomes",
            "Orders finished, by outcome and the API's error code",
            ["outcome", "error_code"],
            m.outcomes.items(),
        )
        buckets, total = m.histogram()
        latency = HistogramMetricFamily(
            "cancel_orders_request_duration_seconds",
            "Time from sending a request to its answer",
            labels=["job"],
        )
        latency.add_metric([job], buckets, total)
        yield latency
        yield counter(
            "cancel_orders_retries",
            "Requests sent again, by reason (retry, throttle, quota, reauth, outage)",
            ["reason"],
            m.retries.items(),
        )
        yield counter(
            "cancel_orders_wait_seconds",
            "Seconds spent waiting, by kind (rate_limit, retry_after, backoff)",
            ["kind"],
            m.waits.items(),
        )
        yield one(
            GaugeMetricFamily,
            "cancel_orders_requests_in_flight",
            "Requests on the wire now",
            m.in_flight,
        )
        yield one(
            CounterMetricFamily,
            "cancel_orders_token_refreshes",
            "Access tokens fetched",
            m.token_refreshes,
        )
        yield one(
            GaugeMetricFamily,
            "cancel_orders_circuit_open",
            "1 while the circuit breaker is open",
            m.circuit_open,
        )
        if m.last_exit_code is not None and m.last_end_s is not None:
            yield one(
                GaugeMetricFamily,
                "cancel_orders_last_run_exit_code",
                "Exit status of the last run (0, 1: success; 2 and above: alert)",
                m.last_exit_code,
            )
            yield one(
                GaugeMetricFamily,
                "cancel_orders_last_run_end_timestamp_seconds",
                "When the last run ended (Unix time)",
                m.last_end_s,
            )
        if m.last_success_s is not None:
            yield one(
                GaugeMetricFamily,
                LAST_SUCCESS,
                "When a run last ended with exit 0 or 1 (Unix time)",
                m.last_success_s,
            )


LAST_SUCCESS = "cancel_orders_last_success_timestamp_seconds"


def _recorded(path: Path, name: str) -> float | None:
    """The value of a metric in a textfile written before (None when absent or unreadable)."""
    try:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith((name + " ", name + "{")):
                return float(line.rsplit(maxsplit=1)[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


async def serve(
    metrics: Metrics, host: str, port: int, healthy: Callable[[], bool]
) -> web.AppRunner:
    """Serve ``/metrics`` and ``/healthz`` until the returned runner is cleaned up."""
    from aiohttp import web  # noqa: PLC0415 - only consume serves; `run` starts faster
    from prometheus_client import CONTENT_TYPE_LATEST  # noqa: PLC0415

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
