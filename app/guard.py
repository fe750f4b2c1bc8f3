"""Two gates in front of the whole server: file references in request bodies, and failed logins.

:class:`UploadGuard` reads every JSON request body before Gradio does and refuses (400) any file
reference (a ``{"path": ...}`` object, Gradio's ``FileData``) that is not a regular file inside the
upload folder: server paths, symlinks out of it, directories, devices, FIFOs, URLs and oversized
files are refused without being opened. It covers every route and every input component at once
(``/gradio_api/queue/join``, ``/call``, ``/run``, ``/stream``, ...), with or without a login.

:class:`LoginLimiter` counts failed logins per client address; :class:`LoginGuard` applies it to
Gradio's ``POST /login`` (the JSON API applies it to its HTTP Basic credentials): after
``attempts`` failures within ``window_s`` seconds, the client is answered 429 until the oldest
failure is that old, whatever it sends.
"""
from __future__ import annotations

import json
import math
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Awaitable, Callable

from .uploads import InputError, check_upload, escape_text

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_JSON_BODY = 2 * 2**20  # Gradio's request bodies hold file references, not file contents
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


def file_references(value: Any) -> list[Any]:
    """Every ``path`` value of an object with a ``path`` key, anywhere in a decoded JSON body."""
    found: list[Any] = []
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            if "path" in v:
                found.append(v["path"])
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return found


def header(scope: Scope, name: bytes) -> str:
    return next((v.decode("latin-1") for k, v in scope.get("headers", []) if k.lower() == name), "")


async def answer(send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    data = json.dumps(body).encode()
    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *extra]})
    await send({"type": "http.response.body", "body": data})


class UploadGuard:
    """ASGI middleware: JSON bodies may name only files in ``folder`` (see the module docstring).
    Paths under ``skip`` (the JSON API, which takes bytes and never paths) are passed through."""

    def __init__(self, app: ASGIApp, folder: str | Path, limit_mb: float, skip: tuple[str, ...] = ()) -> None:
        self.app, self.folder, self.limit_mb, self.skip = app, Path(folder), limit_mb, skip

    def problem(self, body: bytes) -> str | None:
        """Why this body may not reach Gradio, or None (bodies that are not JSON are Gradio's to refuse)."""
        try:
            value = json.loads(body) if body else None
        except ValueError:
            return None
        for path in file_references(value):
            if not isinstance(path, str) or not path:
                return "a file reference needs a path (upload the file first)"
            try:
                check_upload(path, self.folder, self.limit_mb)
            except InputError as e:
                return str(e)
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH") \
                or scope["path"].startswith(self.skip) or header(scope, b"content-type").startswith(FORM_TYPES):
            await self.app(scope, receive, send)
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > MAX_JSON_BODY:
                await answer(send, 413, {"error": f"request body too large (the limit is {MAX_JSON_BODY >> 20} MB)"})
                return
        why = self.problem(bytes(body))
        if why is not None:
            await answer(send, 400, {"error": escape_text(why)})
            return
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: wait for the client to disconnect
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)


class LoginLimiter:
    """Failed logins per client: at most ``attempts`` within ``window_s`` seconds (thread-safe)."""

    def __init__(self, attempts: int = 5, window_s: float = 60.0) -> None:
        self.attempts, self.window_s = max(1, int(attempts)), float(window_s)
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> deque[float]:
        q = self._failures.get(client, deque())
        while q and now - q[0] >= self.window_s:
            q.popleft()
        if not q:
            self._failures.pop(client, None)
        return q

    def wait_s(self, client: str) -> float:
        """Seconds before ``client`` may try again (0: now)."""
        now = time.monotonic()
        with self._lock:
            q = self._recent(client, now)
            return q[0] + self.window_s - now if len(q) >= self.attempts else 0.0

    def failed(self, client: str) -> None:
        now = time.monotonic()
        with self._lock:
            for other in list(self._failures):  # forget clients whose failures are all old
                self._recent(other, now)
            self._failures.setdefault(client, deque()).append(now)

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)

    def refusal(self, wait_s: float) -> tuple[dict[str, str], dict[str, str]]:
        """The 429 answer's JSON body and headers."""
        seconds = max(1, math.ceil(wait_s))
        return ({"error": f"too many failed logins: try again in {seconds} s"}, {"Retry-After": str(seconds)})


def client_of(scope: Scope) -> str:
    return (scope.get("client") or ("unknown",))[0]


class LoginGuard:
    """ASGI middleware: Gradio's ``POST /login`` counted and limited per client by a :class:`LoginLimiter`."""

    def __init__(self, app: ASGIApp, limiter: LoginLimiter) -> None:
        self.app, self.limiter = app, limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"].rstrip("/") != "/login":
            await self.app(scope, receive, send)
            return
        client = client_of(scope)
        wait = self.limiter.wait_s(client)
        if wait > 0:
            await answer(send, 429, *self.limiter.refusal(wait))
            return

        async def counted(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                if message["status"] == 200:
                    self.limiter.succeeded(client)
                elif 400 <= message["status"] < 500:
                    self.limiter.failed(client)
            await send(message)

        await self.app(scope, receive, counted)
