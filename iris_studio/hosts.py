"""What the studio's server answers, before gradio sees a request: host names, origins, body sizes, logins.

- **Host** (DNS rebinding): a page can make its own name resolve to 127.0.0.1 and call the studio as a
  "same-origin" site; its requests still carry that name in `Host`. A studio bound to the loopback interface
  answers loopback names only (and those named with `--allowed-hosts`). Listening on the network
  (`--host 0.0.0.0`) or sharing (`--share`) is the user's opt-in to other names; `--allowed-hosts` narrows
  those too.
- **Origin** (cross-site requests): a browser page of another site may send simple requests (a multipart
  upload, a form post) without asking first. A request whose `Origin` names a host that is not allowed is
  refused.
- **Body size**: uploads over `max_body` bytes and other bodies over 5 MB are refused: by their Content-Length
  up front, and a body sent without one (chunked) is counted as it arrives and cut off at the limit.
- **Logins**: at most `login_attempts` tries per client address per minute. With a login set (`--auth`),
  every API route needs the login cookie except the few a browser calls before logging in; gradio itself leaves
  some of its routes open (`cancel`, `reset`, `heartbeat`, `stream`), and those are refused here.
- **Events**: a predict call naming an `fn_index` the app does not have (or one with no Python function) gets a
  422 here; gradio would answer it with a 500 and a traceback on the console.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterable
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import urlsplit

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
MAX_JSON_BODY = 5 << 20  # API calls carry file paths, not files: their bodies are small
API_PREFIX = "/gradio_api/"
# the API routes a browser calls before it has logged in; with a login set, every other one needs it
PREDICT_ROUTES = ("/run/predict", "/queue/join")  # the calls that name an event by its `fn_index`
PUBLIC_API_ROUTES = frozenset({"login_check", "app_id", "startup-events", "theme.css", "token", "user"})


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


def parse_size(text: str) -> int:
    """"25mb" -> 26214400 (b, kb, mb, gb; binary multiples)."""
    t = text.strip().lower()
    for unit, factor in (("gb", 1 << 30), ("mb", 1 << 20), ("kb", 1 << 10), ("b", 1)):
        if t.endswith(unit):
            return int(float(t[: -len(unit)]) * factor)
    return int(float(t))


class RequestGuard:
    """ASGI middleware applying the rules above; a refused request gets a short plain-text answer (400, 401,
    403, 413 or 429) and reaches nothing of the app."""

    def __init__(self, app: Callable[..., Awaitable[Any]], allowed: frozenset[str] | None, max_body: int,
                 login_attempts: int = 10):
        self.app, self.allowed, self.max_body, self.login_attempts = app, allowed, max_body, login_attempts
        self._logins: dict[str, deque[float]] = defaultdict(deque)

    @staticmethod
    def logged_in(scope: dict[str, Any], headers: dict[bytes, bytes]) -> bool:
        """Whether the request carries a login cookie of the gradio app in `scope` (True when it has no login)."""
        app = scope.get("app")
        if getattr(app, "auth", None) is None or getattr(app, "auth_dependency", None) is not None:
            return True
        cookies = SimpleCookie()
        try:
            cookies.load(headers.get(b"cookie", b"").decode("latin-1"))
        except CookieError:
            return False
        cookie_id = getattr(app, "cookie_id", "")
        tokens = getattr(app, "tokens", {})
        return any(name in cookies and cookies[name].value in tokens
                   for name in (f"access-token-{cookie_id}", f"access-token-unsecure-{cookie_id}"))

    def body_limit(self, headers: dict[bytes, bytes]) -> int:
        """The most bytes a request body may have: `max_body` for an upload, at most 5 MB for anything else."""
        upload = headers.get(b"content-type", b"").lower().startswith(b"multipart/")
        return self.max_body if upload else min(self.max_body, MAX_JSON_BODY)

    @staticmethod
    def too_large(limit: int) -> str:
        return f"Request too large: the limit is {limit / (1 << 20):g} MB."

    def refusal(self, scope: dict[str, Any]) -> tuple[int, str] | None:
        headers = {k.lower(): v for k, v in (scope.get("headers") or [])}
        if self.allowed is not None:
            host = host_name(headers.get(b"host", b"").decode("latin-1"))
            if host not in self.allowed:
                return 400, "Invalid Host header: this studio answers only the host names it was started for."
            origin = headers.get(b"origin", b"").decode("latin-1").strip()
            if origin and origin != "null" and host_name(urlsplit(origin).netloc) not in self.allowed:
                return 403, "Cross-site request refused: the page asking is not this studio's."
            if origin == "null":
                return 403, "Cross-site request refused: the page asking has no origin."
        length = headers.get(b"content-length", b"0").decode("latin-1").strip() or "0"
        limit = self.body_limit(headers)
        if not length.isdigit() or int(length) > limit:
            return 413, self.too_large(limit)
        if scope["type"] == "http" and scope.get("path", "").rstrip("/").endswith("/login"):
            client = (scope.get("client") or ("?", 0))[0]
            now, tries = time.monotonic(), self._logins[client]
            while tries and now - tries[0] > 60:
                tries.popleft()
            if len(tries) >= self.login_attempts:
                return 429, "Too many login attempts: wait a minute and try again."
            tries.append(now)
        path = scope.get("path", "")
        if path.startswith(API_PREFIX):
            route = path[len(API_PREFIX):].strip("/").partition("/")[0]
            if route not in PUBLIC_API_ROUTES and not self.logged_in(scope, headers):
                return 401, "Log in first: this studio has a login."
        return None

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        refused = self.refusal(scope)
        if refused is None and scope["type"] == "http":
            return await self.capped(scope, receive, send)
        if refused is None:
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return None
        await self.answer(send, *refused)
        return None

    @staticmethod
    async def answer(send: Callable, status: int, text: str) -> None:
        body = (text + "\n").encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def capped(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        """Run the app with the body counted as it arrives: a body with no Content-Length (chunked) is cut off
        at the limit too, answered 413, and the app sees the client gone (it never holds more than the limit)."""
        limit = self.body_limit({k.lower(): v for k, v in (scope.get("headers") or [])})
        state = {"received": 0, "started": False, "cut": False}

        async def counted_receive() -> dict[str, Any]:
            if state["cut"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message.get("type") == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > limit:
                    state["cut"] = True
                    if not state["started"]:
                        state["started"] = True
                        await self.answer(send, 413, self.too_large(limit))
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            if state["cut"]:
                return  # the 413 is the answer; whatever the app says about the lost client is dropped
            if message.get("type") == "http.response.start":
                state["started"] = True
            await send(message)

        app_receive = counted_receive
        if scope.get("method") == "POST" and scope.get("path", "").rstrip("/").endswith(PREDICT_ROUTES):
            messages = []  # a predict call's body is small (capped above): read it whole, check it, replay it
            while True:
                message = await counted_receive()
                messages.append(message)
                if message.get("type") != "http.request" or not message.get("more_body"):
                    break
            if state["cut"]:
                return None
            problem = self.unknown_function(scope, b"".join(m.get("body", b"") for m in messages))
            if problem:
                await self.answer(send, 422, problem)
                return None

            async def replay() -> dict[str, Any]:
                return messages.pop(0) if messages else await counted_receive()

            app_receive = replay
        try:
            await self.app(scope, app_receive, guarded_send)
        except Exception:
            if not state["cut"]:
                raise  # the app's own error: not ours to hide
        return None

    @staticmethod
    def unknown_function(scope: dict[str, Any], body: bytes) -> str | None:
        """Why a predict call names no event of this app (an `fn_index` it does not have, or one without a
        Python function), else None. gradio answers those with a 500 and a traceback on the console."""
        import json

        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            return None  # malformed JSON: gradio itself answers 422
        index = data.get("fn_index") if isinstance(data, dict) else None
        if not isinstance(index, int) or isinstance(index, bool):
            return None
        get_blocks = getattr(scope.get("app"), "get_blocks", None)
        fns = getattr(get_blocks(), "fns", None) if callable(get_blocks) else None
        if not isinstance(fns, dict):
            return None
        fn = fns.get(index)
        if fn is None or getattr(fn, "fn", None) is None:
            return f"Unknown fn_index {index}: this studio has no server-side event with that index."
        return None
