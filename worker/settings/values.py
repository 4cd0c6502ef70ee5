"""Pure checks and conversions of setting values: durations, deadlines, URLs, loopback hosts."""

from __future__ import annotations

import ipaddress
import os
import re
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from worker.domain.credentials import mask_url


def _env_proxies() -> list[str]:
    return [v for k, v in os.environ.items() if k.lower() in ("https_proxy", "http_proxy") and v]


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*$")
MAX_DAYS = 36_500  # the longest duration any flag takes: a hundred years


class DurationTooLongError(ValueError):
    """A duration written right, but longer than MAX_DAYS."""


def duration_s(text: str) -> float:
    """``90s``, ``45m``, ``2h``, ``30d`` in seconds, at most MAX_DAYS; ValueError otherwise."""
    found = _DURATION.match(text)
    if found is None:
        raise ValueError(
            f"{text!r} is not a duration: a number and s, m, h or d (90s, 45m, 2h, 30d)"
        )
    seconds = float(found.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[found.group(2)]
    if seconds > MAX_DAYS * 86400:
        raise DurationTooLongError(f"{text!r} is longer than {MAX_DAYS}d")
    return seconds


def deadline_after(text: str, now: datetime) -> datetime:
    """``HH:MM`` (local time: the next such time, today or tomorrow) or an ISO-8601 time (a
    time without a zone is local), as an aware datetime; ValueError otherwise."""
    if re.fullmatch(r"\d{1,2}:\d{2}", text.strip()):
        hours, minutes = (int(x) for x in text.strip().split(":"))
        when = now.replace(hour=hours, minute=minutes, second=0, microsecond=0)
        return when if when > now else when + timedelta(days=1)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not HH:MM or an ISO-8601 time") from None
    return when if when.tzinfo is not None else when.astimezone()


def _checked_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL")
    return value.rstrip("/")


def safe_url(url: str) -> str:
    """``url`` without its credentials (``user:***@host``, ``?password=***``), for printing."""
    return mask_url(url)


def is_loopback(host: str) -> bool:
    """True for localhost and the loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
