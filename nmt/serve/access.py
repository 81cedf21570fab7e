"""Which requests `nmt serve` answers at all: the checks made before any route runs.

A server on 127.0.0.1 is still reachable from every web page the user opens: the browser sends
the page's requests to it. So a request is refused unless its `Host` header names this server (a
loopback name, a specific --host address, or one given with --allow-host), which stops DNS
rebinding, and unless its `Origin`, when a browser sends one, is the server's own or one given
with --allow-origin. With an API key, every route but the page, its files and /health needs
`Authorization: Bearer KEY`. POST /translate takes `application/json` only (its own check in
app.py), so that a plain HTML form cannot post to it either.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from nmt.config import ServeConfig
from nmt.errors import ConfigError

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
# Routes anyone who may reach the server gets without the API key: the page asks for the key.
OPEN_PATHS = ("/", "/health")
OPEN_PREFIXES = ("/static/",)


@dataclass(frozen=True)
class Refusal:
    status: int
    message: str


def host_name(header: str) -> str:
    """The host part of a Host header ("[::1]:8080" -> "::1", "Localhost.:80" -> "localhost")."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    name, _, port = header.rpartition(":")
    if name and port.isdigit():
        header = name
    return header.rstrip(".")


def allowed_hosts(cfg: ServeConfig) -> frozenset[str]:
    """The Host names answered: loopback, a specific --host address, and --allow-host."""
    names = {*LOOPBACK_NAMES, *(name.lower().rstrip(".") for name in cfg.allow_hosts)}
    try:
        if not ipaddress.ip_address(cfg.host).is_unspecified:  # 0.0.0.0 and :: name no host
            names.add(cfg.host.lower())
    except ValueError:
        names.add(cfg.host.lower().rstrip("."))  # a host name given to listen on
    return frozenset(names)


class AccessPolicy:
    """The checks of one server: `refusal(method, path, headers)` says why a request is turned
    away, or None."""

    def __init__(self, cfg: ServeConfig, api_key: str | None = None) -> None:
        self.hosts = allowed_hosts(cfg)
        self.any_host = "*" in cfg.allow_hosts
        self.origins = frozenset(origin.rstrip("/").lower() for origin in cfg.allow_origins)
        self.any_origin = "*" in cfg.allow_origins
        self.api_key = api_key.encode("utf-8") if api_key else None

    def refusal(self, method: str, path: str, headers: dict[str, str]) -> Refusal | None:
        host = headers.get("host")
        if host is None:
            return Refusal(400, "missing Host header")
        if not self.any_host and host_name(host) not in self.hosts:
            allowed = ", ".join(sorted(self.hosts))
            return Refusal(
                400,
                f"Host {host!r} is not a name of this server (answered: {allowed}; the server's "
                "owner can add names with --allow-host)",
            )
        origin = headers.get("origin")
        if origin is not None and not self._origin_ok(origin.rstrip("/").lower(), host):
            return Refusal(
                403,
                f"cross-origin request from {origin!r} refused (the server's owner can allow an "
                "origin with --allow-origin)",
            )
        if self.api_key is not None and method != "OPTIONS" and not _is_open(path):
            given = headers.get("authorization", "")
            scheme, _, token = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                token.strip().encode("utf-8", "replace"), self.api_key
            ):
                return Refusal(401, "missing or wrong API key: send 'Authorization: Bearer KEY'")
        return None

    def _origin_ok(self, origin: str, host: str) -> bool:
        if origin in (f"http://{host.lower()}", f"https://{host.lower()}"):
            return True  # the server's own page
        return self.any_origin or origin in self.origins


def _is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def read_api_key(key: str | None, key_file: Path | None) -> str | None:
    """The API key from --api-key or the first line of --api-key-file (whitespace around it
    dropped), or None for none. ConfigError for both, an empty key or an unreadable file."""
    if key is not None and key_file is not None:
        raise ConfigError("give --api-key or --api-key-file, not both")
    if key_file is not None:
        try:
            lines = Path(key_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--api-key-file {key_file}: cannot be read ({exc})") from None
        key = lines[0] if lines else ""
        if not key.strip():
            raise ConfigError(f"--api-key-file {key_file}: its first line is empty")
    if key is not None and (not key.strip() or any(c.isspace() for c in key.strip())):
        raise ConfigError("the API key is empty or holds spaces")
    return key.strip() if key is not None else None
