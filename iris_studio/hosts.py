"""Which `Host` headers the studio answers: a guard against DNS rebinding.

A web page can make its own host name resolve to 127.0.0.1 and then call the studio as a "same-origin"
site. Its requests still carry that foreign name in `Host`, so a studio bound to the loopback interface
answers only loopback names (and any the user names with `--allowed-hosts`). Listening on the network
(`--host 0.0.0.0`) or sharing (`--share`) is the user's opt-in to other names; `--allowed-hosts` narrows
those too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def host_name(header: str) -> str:
    """The name in a Host header, lower-case, without port, brackets or a trailing dot:
    "LocalHost.:7860" -> "localhost", "[::1]:7860" -> "::1"."""
    text = header.strip().lower()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    return text.rstrip(".")


def allowed_hosts(bind: str, share: bool = False, extra: Iterable[str] = ()) -> frozenset[str] | None:
    """The host names to answer (None: any). Loopback binds answer loopback names; a network bind or a
    share link answers any name unless `extra` lists some."""
    names = frozenset(host_name(h) for h in extra if h.strip())
    if host_name(bind) in LOOPBACK_HOSTS and not share:
        return LOOPBACK_HOSTS | names
    if names:
        return LOOPBACK_HOSTS | names | {host_name(bind)}
    return None


class HostCheck:
    """ASGI middleware: requests (HTTP and websocket) whose Host is not allowed get 400 and reach nothing."""

    def __init__(self, app: Callable[..., Awaitable[Any]], allowed: frozenset[str] | None):
        self.app, self.allowed = app, allowed

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if self.allowed is None or scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        host = host_name(headers.get(b"host", b"").decode("latin-1"))
        if host in self.allowed:
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return None
        body = b"Invalid Host header: this studio answers only the host names it was started for.\n"
        await send({"type": "http.response.start", "status": 400,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
        return None
