"""The two sides of the pool: where its orders come from and where its results go.

A new source (a Kafka topic, an S3 manifest) implements ``Source``; a new place to record
results implements ``Sink``. The adapters live in the folders that name them: the input
claimed in the ledger (``worker.sources.claimed``) and a Redis stream's entries
(``worker.sources.stream_entries``); the ledger (``worker.sinks.ledger``) and the results
stream (``worker.sinks.results_stream``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Protocol

from worker.domain.answer import Answer
from worker.domain.models import Result
from worker.pipeline.order import OrderState


class Source(Protocol):
    """Where a pool's orders come from."""

    def helpers(self) -> Sequence[Coroutine[Any, Any, None]]:
        """Tasks that fill the source (reading, claiming); cancelled when the run stops."""
        ...

    def keepers(self) -> Sequence[Coroutine[Any, Any, None]]:
        """Tasks that keep what the source holds its own (a lease, entries' idle time); run
        until the requests in flight are drained."""
        ...

    async def take(self) -> OrderState | None:
        """The next order to send; None when there are no more."""
        ...

    def left(self) -> int | None:
        """The orders still to be taken, once the source knows no more will come; None while
        more may (a stream's never do: its end is not known)."""
        ...

    def ownership(self) -> Callable[[OrderState], Awaitable[bool | None]] | None:
        """The check, after the rate limiter and right before each DELETE, that an order is
        still this run's (None: it could not be told, and the run stops); None when nothing
        else can take it (a ledger file this run holds locked)."""
        ...


class Sink(Protocol):
    """Where a pool's results go."""

    async def record(self, state: OrderState, result: Result) -> None:
        """An order's result (`pending` when the run stopped before its answer)."""
        ...

    def interrupted(self, state: OrderState, result: Result) -> None:
        """A worker stopped before its order's answer (cancelled, or a bug): its `pending`
        result, which says why; never awaits."""
        ...

    def attempt(self, state: OrderState, method: str, number: int, answer: Answer) -> None:
        """One answered request for this order (the attempt log); never awaits, and comes
        before the order's result."""
        ...

    def brake(self, pause: Callable[[float], None]) -> None:
        """How to hold every request for a while (the limiter's pause), for a sink that may
        fall behind: no order is sent whose outcome it could not record."""
        ...
