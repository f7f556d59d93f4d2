"""The HTTP service (`cxr-orient serve`): its address, what one request or one peer may
hold, the review page's sessions and logins, the reverse proxies it believes, and the
token of its /metrics."""

from __future__ import annotations

import ipaddress
from typing import Annotated, TypeAlias

from pydantic import Field, SecretStr, field_validator

from cxr_orient.settings.base import CommaList, SettingsGroup, from_text

__all__ = ["HttpSettings", "Network"]

Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network


def _network(text: str) -> Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise ValueError(f"CXR_TRUSTED_PROXIES: {text!r} is not an address or network") from exc


class HttpSettings(SettingsGroup):
    """Address, limits, sessions and proxies of `cxr-orient serve`."""

    http_host: str = Field(
        default="127.0.0.1",
        description="CXR_HTTP_HOST: address `cxr-orient serve` listens on (review page, "
        "STOW-RS, health). Default 127.0.0.1.",
    )
    http_port: int = Field(
        default=8080,
        ge=1,
        le=65_535,
        description="CXR_HTTP_PORT: TCP port of `cxr-orient serve`. Default 8080.",
    )
    stow_max_request_mb: int = Field(
        default=2048,
        ge=1,
        description="CXR_STOW_MAX_REQUEST_MB: largest STOW-RS request body, in MiB (each part "
        "is also bounded by the worker's largest file, from CXR_MAX_PIXELS); a larger "
        "request is answered 413. Default 2048.",
    )
    http_max_body_kb: int = Field(
        default=64,
        ge=1,
        description="CXR_HTTP_MAX_BODY_KB: largest request body of every route but STOW-RS "
        "(the login, review and admin forms, the JSON API), in KiB; a larger one is "
        "answered 413 before it is parsed (Content-Length checked first, a chunked body "
        "counted as it arrives). Default 64.",
    )
    http_header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="CXR_HTTP_HEADER_TIMEOUT_S: seconds a connection may take to send a "
        "request's line and headers (from connecting, or from the previous answer); a "
        "slower one is answered 408 and closed. Default 10.",
    )
    http_body_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="CXR_HTTP_BODY_TIMEOUT_S: seconds a request body of every route but "
        "STOW-RS may take to arrive whole once its headers are in; a slower one is "
        "answered 408 and closed. Default 30.",
    )
    stow_body_timeout_s: float = Field(
        default=900.0,
        gt=0,
        description="CXR_STOW_BODY_TIMEOUT_S: the same deadline for a STOW-RS request body "
        "(up to CXR_STOW_MAX_REQUEST_MB). Default 900.",
    )
    http_max_connections: int = Field(
        default=256,
        ge=1,
        description="CXR_HTTP_MAX_CONNECTIONS: open connections `cxr-orient serve` holds at "
        "once; one more is answered 503 and closed at once (logged). Default 256.",
    )
    http_max_connections_per_client: int = Field(
        default=32,
        ge=1,
        description="CXR_HTTP_MAX_CONNECTIONS_PER_CLIENT: open connections one peer address "
        "may hold (the addresses of CXR_TRUSTED_PROXIES excepted: every client behind them "
        "shares them); one more is answered 503 and closed at once (logged), so one peer "
        "cannot take every connection. Default 32.",
    )
    session_key: SecretStr | None = Field(
        default=None,
        description="CXR_SESSION_KEY: the key that signs the review page's session "
        "cookies (at least 32 characters). Default unset: a random key is made once and "
        "kept in <CXR_DATA_DIR>/session-key (mode 0600); set it when several `serve` "
        "processes must accept each other's cookies. Changing it logs everybody out.",
    )
    session_cookie_secure: bool = Field(
        default=False,
        description="CXR_SESSION_COOKIE_SECURE: mark the session cookie Secure (sent over "
        "HTTPS only). Turn on behind a TLS-terminating proxy. Default false (the default "
        "listen address is 127.0.0.1, plain HTTP).",
    )
    session_max_age_s: int = Field(
        default=12 * 3600,
        ge=60,
        description="CXR_SESSION_MAX_AGE_S: how long a login lasts, in seconds. Default "
        "43200 (12 hours).",
    )
    login_max_failures: int = Field(
        default=5,
        ge=1,
        description="CXR_LOGIN_MAX_FAILURES: failed logins allowed per username and client "
        "address within CXR_LOGIN_WINDOW_S; further attempts are answered 429 without "
        "checking the password. Counted in the database (shared by every serve process). "
        "Default 5.",
    )
    login_window_s: int = Field(
        default=900,
        ge=1,
        description="CXR_LOGIN_WINDOW_S: the rate limit's window, in seconds. Default 900.",
    )
    trusted_user_header: str | None = Field(
        default=None,
        description="CXR_TRUSTED_USER_HEADER: for single sign-on behind a reverse proxy, the "
        "request header naming the logged-in user (e.g. X-Remote-User); the user must exist "
        "(`cxr-orient user create --no-password`) and its role applies. Believed only from "
        "CXR_TRUSTED_PROXIES. Default unset (off).",
    )
    trusted_proxies: CommaList[Annotated[Network, from_text(_network)]] = Field(
        default=[],
        description="CXR_TRUSTED_PROXIES: comma-separated addresses or networks "
        "(10.0.0.5, 10.1.0.0/16) of the reverse proxies in front of `cxr-orient serve`: "
        "only a connection from one of them has its CXR_TRUSTED_USER_HEADER believed and "
        "its X-Forwarded-For read (walked from the right, skipping these proxies) for the "
        "client's address that rate limits and logs use. Default empty: the socket's "
        "peer is the client.",
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description="CXR_METRICS_TOKEN: when set, the service's GET /metrics wants "
        "'Authorization: Bearer <this>'. Default unset: /metrics is open, like /healthz "
        "(the service binds 127.0.0.1 by default).",
    )

    @field_validator("session_key")
    @classmethod
    def _long_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("CXR_SESSION_KEY must be at least 32 characters")
        return value
