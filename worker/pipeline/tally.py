"""Counting an order's result, in one place: the run's summary, its metrics, and the one log
event per order (``order``). A sink counts each result it takes as this run's."""

from __future__ import annotations

from typing import Any

from worker.domain.models import Result, RunSummary
from worker.runtime.logs import info_event
from worker.runtime.metrics import Metrics


class Tally:
    """Counts results into a summary and metrics, and logs each (unless ``logged`` is False:
    a check's predictions, which its report shows)."""

    def __init__(
        self,
        summary: RunSummary,
        metrics: Metrics,
        *,
        logged: bool = True,
        fields: dict[str, Any] | None = None,
    ) -> None:
        self.summary = summary
        self._metrics = metrics
        self._logged = logged
        self._fields = fields or {}  # added to every order's event (a consumer's name)

    def count(self, result: Result) -> None:
        """One order's result, counted and logged."""
        self.summary.add(result)
        self._metrics.finished(result)
        if self._logged:
            fields = result.log_fields()
            if self._fields:
                fields.update(self._fields)
            info_event("order", fields)
