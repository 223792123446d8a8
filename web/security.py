"""Who may talk to the server: same-origin (or one allowed origin) and, off loopback, a bearer token.

A browser on any web page can send requests to 127.0.0.1, so cross-origin requests are refused unless the
operator names the origin. Anyone on the network can reach a non-loopback address, so there every route,
websocket included, needs the token.
"""
from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
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


def _host_port(netloc: str, scheme: str = "") -> tuple[str, int | None]:
    parts = urlsplit(f"{scheme or 'http'}://{netloc}")
    try:
        port = parts.port
    except ValueError:
        port = -1  # unparseable: never equal to a real port
    return (parts.hostname or "").lower(), port


def same_origin(origin: str, host: str | None) -> bool:
    """Origin's host:port equals the Host header; a port missing on one side is not compared (as ComfyUI)."""
    if not host or origin == "null":
        return False
    scheme, _, rest = origin.partition("://")
    if not rest:
        return False
    o_host, o_port = _host_port(rest, scheme)
    h_host, h_port = _host_port(host)
    if o_host != h_host:
        return False
    return o_port is None or h_port is None or o_port == h_port


def origin_middleware(cors_origin: str | None) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def check_origin(request: web.Request, handler: Handler) -> web.StreamResponse:
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
