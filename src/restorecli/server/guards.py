"""Request-level guards of ``restorecli serve``, in front of every route: which ``Host`` it answers to (DNS
rebinding), which pages may change its state (cross-site requests), ``HEAD`` wherever ``GET`` works, errors as
JSON even where Starlette answers in plain text, conditional requests, how many uploads are read at once, and how
long a slow client may take over its headers and its body.

The checks are plain functions over header values; ``RequestGuard`` applies them as ASGI middleware,
``UploadSlots`` counts the uploads ``POST /enhance`` reads (``routes.deps.upload_slot`` holds one),
``timed_chunks`` wraps its body, and ``slow_client_protocol`` is the uvicorn protocol that closes a connection
whose headers do not arrive in time.
"""

from __future__ import annotations

import ipaddress
import json
import time
from http import HTTPStatus
from typing import AsyncIterator

import anyio
from fastapi import HTTPException

from ..errors import UsageError
from .config import ServeConfig, parse_origin
from .uploads import UploadRefused

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::", "[::]"})
MIN_BODY_RATE = 1024  # bytes a second an upload must average once its first read_timeout has passed
RETRY_AFTER = 5  # seconds a client refused for want of an upload slot is told to wait
_ERROR_BODY = 16 * 1024  # the most of a non-JSON error body turned into a detail

# The docs page loads its own files and the document (Swagger UI sets styles inline, so they are allowed there;
# scripts never are). The dashboard's page has its own policy (routes/dashboard.py)
DOCS_CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
            "connect-src 'self'; font-src 'self' data:; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")


def split_host(value: str) -> tuple[str, int | None]:
    """A ``Host`` header (or an origin's authority) as (lower-case name, port or None); IPv6 without brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        name, port = value.split(":")
    else:
        name, port = value, ""
    if port and not port.isdigit():
        raise ValueError(f"port '{port}'")
    return name.rstrip("."), int(port) if port else None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _is_loopback_ip(name: str) -> bool:
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class HostPolicy:
    """The ``Host`` names a server answers to: its bound address, ``localhost`` (and any loopback address) and each
    ``--allowed-host``. Bound to every address (0.0.0.0, ::) it answers to any IP address, since no DNS rebinding
    yields one, and, unless ``--allowed-host`` names some, to any name: the names that reach such a server are
    not known here, and the API key guards it."""

    def __init__(self, bind: str, allowed: tuple[str, ...] = ()):
        self.wildcard = bind.strip().lower() in WILDCARD_BINDS
        self.names = frozenset({split_host(bind)[0] if bind.startswith("[") else bind.lower(), "localhost",
                                *allowed})
        self.any_name = self.wildcard and not allowed

    def refusal(self, host: str | None) -> str | None:
        """Why ``host`` (the request's Host header) is refused, or None."""
        if host is None:
            return "a request without a Host header"
        try:
            name, _ = split_host(host)
        except ValueError:
            return f"Host header '{host[:100]}' is malformed"
        if name in self.names or _is_loopback_ip(name) or (self.wildcard and _is_ip(name)) or self.any_name:
            return None
        return (f"Host '{name[:100]}' is not a name this server answers to (a page on another site may be "
                f"reaching it through DNS rebinding); if it is this server's name, start it with "
                f"--allowed-host {name[:100]}")


def cross_site_refusal(method: str, origin: str | None, fetch_site: str | None, host: str | None,
                       cors_origin: str | None) -> str | None:
    """Why a state-changing request comes from a page of another site, or None. A request whose ``Origin`` is
    this server's own (as its ``Host`` names it) or the configured ``--cors-origin`` passes; so does one with
    neither ``Origin`` nor a cross-site ``Sec-Fetch-Site`` (curl, the restorecli client)."""
    if method not in STATE_CHANGING:
        return None
    if origin is not None:
        if origin == "null":
            return "a request from a page with an opaque origin (a sandboxed frame or a local file)"
        try:
            given = parse_origin(origin, "Origin")
        except UsageError:
            return f"a request whose Origin '{origin[:100]}' is malformed"
        if cors_origin is not None and given == cors_origin:
            return None
        scheme, _, authority = given.partition("://")
        try:
            name, port = split_host(authority)
            own_name, own_port = split_host(host or "")
        except ValueError:
            return f"a request from {given[:100]}, another site"
        default = 443 if scheme == "https" else 80
        if (name, port or default) == (own_name, own_port or default):
            return None
        return f"a request from a page of {given[:100]}, another site"
    if fetch_site in ("cross-site", "same-site"):
        return f"a {fetch_site} request (Sec-Fetch-Site) without an Origin"
    return None


def not_modified(if_none_match: str | None, etag: str) -> bool:
    """Whether ``If-None-Match`` matches ``etag`` (weak comparison, as RFC 9110 has for it; ``*`` matches any
    current version), so the answer is 304."""
    if not if_none_match:
        return False
    tags = [tag.strip() for tag in if_none_match.split(",")]
    return "*" in tags or etag.removeprefix("W/") in [tag.removeprefix("W/") for tag in tags]


class _HeadSent(Exception):
    """A HEAD request's headers have gone out: the GET handler behind it may stop producing its body."""


class RequestGuard:
    """ASGI middleware: refuses a foreign ``Host`` (400) and a cross-site state-changing request (403); answers
    ``HEAD`` with the headers ``GET`` would send; turns a plain-text error from below (Starlette's range errors,
    for one) into ``{"detail": ...}``."""

    def __init__(self, app, config: ServeConfig):
        self.app = app
        self.hosts = HostPolicy(config.host, config.allowed_hosts)
        self.cors_origin = config.cors_origin

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        method = scope["method"].upper()
        refusal = self.hosts.refusal(headers.get("host"))
        status = 400
        if refusal is None:
            refusal = cross_site_refusal(method, headers.get("origin"), headers.get("sec-fetch-site"),
                                         headers.get("host"), self.cors_origin)
            status = 403
            if refusal is not None:
                refusal += ("; pages of other sites may not change this server's state (--cors-origin lets one "
                            "origin)")
        if refusal is not None:
            await _send_json(send, status, refusal, {})
            return
        head = method == "HEAD"
        if head:
            scope = {**scope, "method": "GET"}
        try:
            await self.app(scope, receive, _JsonErrors(send, head))
        except _HeadSent:
            pass


class _JsonErrors:
    """The ``send`` of one request: an error answer that is not JSON is rewritten as ``{"detail": ...}``; for HEAD,
    the body is dropped and the handler stopped once the headers are out."""

    def __init__(self, send, head: bool):
        self.send, self.head = send, head
        self.start: dict | None = None  # an error's start, held until its body is known
        self.body = bytearray()

    async def __call__(self, message: dict) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            content_type = dict(message.get("headers", [])).get(b"content-type", b"")
            if message["status"] >= 400 and not content_type.startswith(b"application/json"):
                self.start = message
                return
            await self.send(message)
            if self.head:
                await self.send({"type": "http.response.body", "body": b"", "more_body": False})
                raise _HeadSent
            return
        if kind == "http.response.body" and self.start is not None:
            if len(self.body) < _ERROR_BODY:
                self.body += message.get("body", b"")[:_ERROR_BODY]
            if message.get("more_body"):
                return
            start, self.start = self.start, None
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() not in (b"content-type",
                                                                                       b"content-length")]
            await _send_json(self.send, start["status"], _detail(start["status"], headers, bytes(self.body)),
                             headers, self.head)
            return
        await self.send(message)


def _detail(status: int, headers: list, body: bytes) -> str:
    text = body.decode("utf-8", "replace").strip()
    if status == 416:
        size = dict(headers).get(b"content-range", b"").rpartition(b"/")[2].decode("latin-1")
        return (f"the requested range is not within the file ({size} bytes)" if size.isdigit() else
                "the requested range is not within the file")
    if status == 400 and text:
        return text.rstrip(".")
    return text or HTTPStatus(status).phrase


async def _send_json(send, status: int, detail: str, headers: list | dict, head: bool = False) -> None:
    body = json.dumps({"detail": detail}).encode()
    extra = list(headers.items()) if isinstance(headers, dict) else list(headers)
    await send({"type": "http.response.start", "status": status, "headers": [
        *extra, (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"x-content-type-options", b"nosniff")]})
    await send({"type": "http.response.body", "body": b"" if head else body, "more_body": False})


class UploadSlots:
    """``most`` upload slots, one held while a request is read; a request beyond them is answered 503 with
    ``Retry-After`` at once (it does not wait, holding a connection). ``routes.deps.upload_slot`` is the
    dependency that holds one."""

    def __init__(self, most: int):
        self.most, self.busy = most, 0

    def take(self) -> None:
        if self.busy >= self.most:
            raise HTTPException(503, f"the server is already reading {self.most} uploads; try again in "
                                     f"{RETRY_AFTER} seconds", headers={"Retry-After": str(RETRY_AFTER)})
        self.busy += 1

    def give_back(self) -> None:
        self.busy -= 1


async def timed_chunks(chunks: AsyncIterator[bytes], timeout: float,
                       min_rate: float = MIN_BODY_RATE) -> AsyncIterator[bytes]:
    """``chunks`` (a request body), refused with 408 when the client sends nothing for ``timeout`` seconds or,
    once ``timeout`` has passed, averages less than ``min_rate`` bytes a second: a slow client cannot hold an
    upload slot for long."""
    iterator = chunks.__aiter__()
    started = time.monotonic()
    received = 0
    while True:
        allowed = min(timeout, timeout + received / min_rate - (time.monotonic() - started))
        try:
            with anyio.fail_after(max(allowed, 0.0)):
                chunk = await iterator.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise UploadRefused(408, f"the upload arrived too slowly (the server waits at most {timeout:g} seconds "
                                     f"for more of it, and {min_rate / 1024:g} KB a second on average); it stopped "
                                     "reading it") from None
        received += len(chunk)
        yield chunk


def slow_client_protocol(timeout: float) -> type:
    """uvicorn's h11 protocol, closing a connection that has not sent a request's headers within ``timeout``
    seconds of opening or of its last answer (uvicorn's keep-alive timer stops at the first byte, so a client
    sending a header a minute would hold its connection for ever), or that is still sending a body nobody reads."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class SlowClientProtocol(H11Protocol):
        _read_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            if not self.transport.is_closing():
                self._read_timer = self.loop.call_later(timeout, self._expire, self.cycle)

        def _disarm(self) -> None:
            if self._read_timer is not None:
                self._read_timer.cancel()
                self._read_timer = None

        def _expire(self, cycle) -> None:
            self._read_timer = None
            if self.cycle is cycle and not self.transport.is_closing():  # no request's headers since arming
                self.transport.close()

        def send_400_response(self, msg: str) -> None:
            """A request h11 cannot parse (not HTTP, headers over uvicorn's 16 KB) is answered in JSON too."""
            import h11

            body = json.dumps({"detail": "not a valid HTTP/1.1 request (or its headers are over 16 KB)"}).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                       (b"connection", b"close")]
            try:
                self.transport.write(self.conn.send(h11.Response(status_code=400, headers=headers)))
                self.transport.write(self.conn.send(h11.Data(data=body)))
                self.transport.write(self.conn.send(h11.EndOfMessage()))
            except h11.LocalProtocolError:  # an answer had begun already: only closing is left
                pass
            self.transport.close()

    return SlowClientProtocol
