"""Credentials inside URLs, in every form they take: userinfo (``user:pass@``) and query
parameters that carry a secret (libpq's ``password`` and ``sslpassword``, a SAS ``sig``, a
``token``, a ``key``). Pure functions: what to redact, and the URL as it may be shown."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

# Query parameters whose value is a secret (compared without regard to case, "-" as "_").
SECRET_PARAMS = frozenset(
    {
        "password",
        "sslpassword",
        "passwd",
        "pwd",
        "secret",
        "client_secret",
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "sig",
        "signature",
        "key",
        "api_key",
        "apikey",
        "subscription_key",
        "code",
        "auth",
        "authorization",
    }
)
MASK = "***"  # what stands for a credential inside a URL or a command line
REDACTED = "[REDACTED]"  # what stands for a secret anywhere else


def _secret_param(name: str) -> bool:
    return name.lower().replace("-", "_") in SECRET_PARAMS


def url_secrets(url: str) -> list[str]:
    """The secret values a URL carries: its userinfo password and the values of its secret
    query parameters, both as written and decoded (either may be shown)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # a malformed port or netloc: nothing can be told apart
        return []
    found: list[str] = []
    if password:
        found.append(password)
        raw = parts.netloc.rsplit("@", 1)[0].partition(":")[2]
        found.append(raw)
    for piece in parts.query.split("&"):
        name, _, raw_value = piece.partition("=")
        if raw_value and _secret_param(name):
            found.append(raw_value)
    for name, value in parse_qsl(parts.query, keep_blank_values=False):
        if value and _secret_param(name):
            found.append(value)
    return list(dict.fromkeys(found))


def mask_url(url: str) -> str:
    """``url`` with its userinfo password and its secret query values replaced by ``***``."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    netloc = parts.netloc
    if password is not None:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.partition(":")[0]
        netloc = f"{user}:{MASK}@{host}"
    query = parts.query
    if query:
        pieces = []
        for piece in query.split("&"):
            name, eq, value = piece.partition("=")
            pieces.append(f"{name}={MASK}" if eq and value and _secret_param(name) else piece)
        query = "&".join(pieces)
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def host_only(url: str) -> str:
    """What is shown of a URL whose path is itself the secret (a Slack or Teams webhook):
    ``scheme://host/***``."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return MASK
    return f"{parts.scheme or 'https'}://{quote(host, safe='.-[]:')}{port}/{MASK}"


_ANY_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>]+")


def mask_urls(text: str) -> str:
    """``text`` with the credentials of every URL in it masked."""
    return _ANY_URL.sub(lambda m: mask_url(m.group(0)), text) if "://" in text else text
