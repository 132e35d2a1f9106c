"""What the relay delivers events to: a small Subscriber interface and its error hierarchy.

A subscriber is registered once per app with ``erp_sync.register_subscriber(app, subscriber)``; it
then gets a delivery row for every event of its topics (``erp_sync.outbox.registry``) and the relay
calls ``deliver(payload)`` for each, after commit, outside any database transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from flask import Flask

from erp_sync.outbox import registry

EXTENSION = "renopay.subscribers"


class DeliveryError(Exception):
    """A delivery did not succeed. ``detail`` is stored as the delivery's last_error (no secrets)."""

    def __init__(self, detail: str):
        self.detail = detail[:500]
        super().__init__(self.detail)


class RetryableError(DeliveryError):
    """Try again later, with backoff (connection refused, timeout, 5xx, any non-2xx for the ERP)."""


class PermanentError(DeliveryError):
    """Retrying cannot help (e.g. the customer blocked the account): dead-letter at once."""


class Subscriber:
    """Base class: set ``name`` and ``topics`` (None: every topic) and implement ``deliver``."""

    name: str = ""
    topics: frozenset[str] | None = None

    def not_ready_reason(self) -> str | None:
        """Why deliveries must wait right now (e.g. no URL configured), or None when ready.

        A subscriber that is not ready is skipped by the relay: its deliveries stay pending, are
        neither attempted nor dead-lettered, and ``outbox status`` shows the reason."""
        return None

    def deliver(self, payload: Mapping[str, Any]) -> None:
        """Deliver one event body; return on success, raise RetryableError/PermanentError otherwise.

        Must be safe to call again with the same payload (at-least-once delivery): receivers
        dedupe by ``payload["id"]``."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections (called when the app's scheduler stops)."""


def register_subscriber(app: Flask, subscriber: Subscriber, topics: Iterable[str] | None = None) -> None:
    """Make ``subscriber`` receive events of ``topics`` (default: ``subscriber.topics``).

    Events emitted from now on get a delivery row for it; the relay of this app delivers them."""
    if not subscriber.name or len(subscriber.name) > 32:
        raise ValueError("a subscriber needs a name of 1-32 characters")
    wanted = subscriber.topics if topics is None else frozenset(map(str, topics))
    registry.register(subscriber.name, wanted)
    subscribers(app)[subscriber.name] = subscriber


def subscribers(app: Flask) -> dict[str, Subscriber]:
    found: dict[str, Subscriber] = app.extensions.setdefault(EXTENSION, {})
    return found
