"""Who may talk to the server: same-origin (or one allowed origin) and, off loopback, a bearer token.

A browser on any web page can send requests to 127.0.0.1, so cross-origin requests are refused unless the
operator names the origin. A page can also point its own host name at 127.0.0.1 (DNS rebinding) and so be
"same-origin": without a token, a request whose Host is not a loopback name or a listen address is refused.
Anyone on the network can reach a non-loopback address, so there every route, websocket included, needs the
token.
"""
from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
CORS_HEADERS = {"Access-Control-Allow-Methods": "POST, GET, DELETE, PUT, OPTIONS",
                "Access-Control-Allow-Headers": "Content-Type, Authorization",
                "Access-Control-Allow-Credentials": "true"}


def is_loopback(listen: str) -> bool:
    """True when every address of a comma-separated --listen value is loopback."""
    for host in (h.strip().strip("[]") for h in listen.split(",")):
        if host == "localhost":
            continue
        try:
            if not ipaddress.ip_address(host).is_loopback:
                return False
        except ValueError:
            return False  # a host name could resolve anywhere
    return True


def _normal(host: str) -> str:
    """A host name lowercased, an IP address in its canonical form (`[::1]`, `0:0::1` → `::1`)."""
    host = host.strip().strip("[]").lower()
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def _host_port(netloc: str, scheme: str = "http") -> tuple[str, int | None]:
    """(host, port) of `host[:port]`; a missing port is the scheme's default (None for an unknown scheme)."""
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        port = parts.port
    except ValueError:
        return "", -1  # unparseable: never equal to a real host or port
    if port is None:
        port = DEFAULT_PORTS.get(scheme.lower())
    return _normal(parts.hostname or ""), port


def same_origin(origin: str, host: str | None) -> bool:
    """Origin's host and port equal the Host header's, strictly: a missing port is the default one (80 for
    `http`, 443 for `https`; 80 for the Host header, as this server speaks plain HTTP)."""
    if not host or origin == "null":
        return False
    scheme, _, rest = origin.partition("://")
    if not rest:
        return False
    o_host, o_port = _host_port(rest, scheme)
    h_host, h_port = _host_port(host)
    return bool(o_host) and o_host == h_host and o_port is not None and o_port == h_port


def allowed_hosts(listen: str) -> frozenset[str]:
    """The Host names a token-less server answers to: loopback names and its own listen addresses."""
    return frozenset(_normal(h) for h in (*LOOPBACK_NAMES, *listen.split(",")) if h.strip())


def host_allowed(host: str | None, allowed: frozenset[str]) -> bool:
    return bool(host) and _host_port(host)[0] in allowed


def origin_middleware(cors_origin: str | None,
                      hosts: frozenset[str] | None = None) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Refuse cross-origin requests (unless `cors_origin` allows them) and, when `hosts` is given, any request
    whose Host header names another host (websocket upgrades included)."""

    @web.middleware
    async def check_origin(request: web.Request, handler: Handler) -> web.StreamResponse:
        if hosts is not None and not host_allowed(request.headers.get("Host"), hosts):
            return web.json_response({"error": {"type": "forbidden_host", "message":
                                      f"requests for host {request.headers.get('Host')!r} are refused",
                                      "details": "without --token only localhost and the --listen addresses are "
                                      "served (a defence against DNS rebinding)", "extra_info": {}}}, status=403)
        origin = request.headers.get("Origin")
        allowed = cors_origin is not None and (cors_origin == "*" or origin == cors_origin)
        if origin is not None and not allowed and not same_origin(origin, request.headers.get("Host")):
            return web.json_response({"error": {"type": "forbidden_origin", "message":
                                      f"cross-origin request from {origin!r} refused", "details": "start the "
                                      "server with --enable-cors-header ORIGIN to allow it", "extra_info": {}}},
                                     status=403)
        if request.method == "OPTIONS":
            response: web.StreamResponse = web.Response()
        else:
            response = await handler(request)
        if cors_origin is not None and not response.prepared:
            response.headers["Access-Control-Allow-Origin"] = cors_origin
            response.headers.update(CORS_HEADERS)
        return response

    return check_origin


def token_middleware(token: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    expected = token.encode()

    @web.middleware
    async def check_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "OPTIONS":  # preflights carry no credentials and get no data
            return await handler(request)
        given = request.query.get("token", "")
        auth = request.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if not hmac.compare_digest(given.encode(), expected):
            return web.json_response({"error": {"type": "unauthorized", "message": "a valid token is required",
                                                "details": "send `Authorization: Bearer TOKEN` or ?token=TOKEN",
                                                "extra_info": {}}},
                                     status=401, headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)

    return check_token
