"""A plain JSON API beside the web page, for scripts and other services (no Gradio client needed).

    GET  /api/v1/health                     {"status": "ok"}  (never needs a login)
    GET  /api/v1/people                     the enrolled people
    POST /api/v1/people?name=Ada            multipart form, files ``photos`` (1 to 20) -> enroll them
    DELETE /api/v1/people?name=Ada          remove a person and their photos
    POST /api/v1/identify?k=3               body: the photo's bytes -> every face and its best matches
    POST /api/v1/verify                     multipart form, files ``a`` and ``b`` -> same person or not

    curl --data-binary @photo.jpg http://127.0.0.1:7860/api/v1/identify
    curl -F photos=@ada1.jpg -F photos=@ada2.jpg "http://127.0.0.1:7860/api/v1/people?name=Ada"
    curl -F a=@one.jpg -F b=@two.jpg http://127.0.0.1:7860/api/v1/verify

One request is one round trip: the photo goes in the body and the answer is the same JSON the
page shows, computed by the same :class:`~app.face_demo.FaceDemo` methods. Bad input answers 400
with ``{"error": message}``, a photo over the upload limit 413, and, when the app has a login
(``H_APP_AUTH``), a request without its HTTP Basic credentials 401, and a client with too many
failed logins 429 (one :class:`~app.guard.LoginLimiter` for the page's login and the API). At most
``concurrency`` requests are worked on at once; the rest wait their turn. An unknown name to delete
answers 404. Error messages are HTML-escaped text (a name in one can be shown as is).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import secrets
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from .face_demo import MAX_PHOTOS, FaceDemo
from .guard import LoginLimiter
from .uploads import MAX_UPLOAD_MB, InputError, decode_image, escape_text

PREFIX = "/api/v1"


def error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": escape_text(message)}, status_code=status, headers=headers or None)


def basic_auth_ok(header: str | None, auth: tuple[str, str]) -> bool:
    """Does an ``Authorization: Basic ...`` header carry exactly these credentials (compared in constant time)?"""
    scheme, _, value = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        user, sep, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    same_user = secrets.compare_digest(user.encode(), auth[0].encode())
    same_password = secrets.compare_digest(password.encode(), auth[1].encode())
    return bool(sep) and same_user and same_password


def add_api(server: FastAPI, faces: FaceDemo, auth: tuple[str, str] | None = None, concurrency: int = 2,
            limiter: LoginLimiter | None = None) -> None:
    """Register the JSON routes on ``server`` (before Gradio is mounted at ``/``); ``limiter``: failed
    logins per client (default: a limiter of its own)."""
    limit = MAX_UPLOAD_MB * 1024 * 1024
    too_large = f"photo too large (the limit is {MAX_UPLOAD_MB} MB)"
    slots = asyncio.Semaphore(max(1, concurrency))
    limiter = limiter or LoginLimiter()

    def denied(request: Request) -> JSONResponse | None:
        if not auth:
            return None
        client = request.client.host if request.client else "unknown"
        wait = limiter.wait_s(client)
        if wait > 0:
            body, headers = limiter.refusal(wait)
            return error(429, body["error"], **headers)
        if not basic_auth_ok(request.headers.get("authorization"), auth):
            if request.headers.get("authorization"):  # a wrong password, not a first request without one
                limiter.failed(client)
            return error(401, "log in: this app needs HTTP Basic credentials", **{"WWW-Authenticate": "Basic"})
        limiter.succeeded(client)
        return None

    async def run(work: Callable[[], Any]) -> JSONResponse:
        """``work`` in a worker thread once a slot is free; its InputError becomes a 400, LookupError a 404."""
        try:
            async with slots:
                return JSONResponse(await run_in_threadpool(work))
        except InputError as e:
            return error(400, str(e))
        except LookupError as e:
            return error(404, str(e))

    async def read_body(request: Request) -> bytes | JSONResponse:
        size = request.headers.get("content-length", "")
        if size.isdigit() and int(size) > limit:
            return error(413, too_large)
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > limit:
                return error(413, too_large)
        if not data:
            return error(400, "send the photo's bytes as the request body")
        return bytes(data)

    async def form_files(request: Request, keys: str | tuple[str, ...], most: int
                         ) -> list[tuple[str, bytes]] | JSONResponse:
        """The (file name, bytes) uploaded in a multipart form: every file under ``keys`` (one name: up to
        ``most`` files; a tuple: exactly one file each, in that order)."""
        size = request.headers.get("content-length", "")
        if size.isdigit() and int(size) > most * limit:
            return error(413, f"too much data (the limit is {MAX_UPLOAD_MB} MB a photo)")
        try:
            form = await request.form(max_files=most, max_fields=most, max_part_size=limit)
        except Exception as e:  # a malformed multipart body, too many parts, an oversized part
            return error(400, f"send a multipart form with the photos ({e})")
        parts = [form.get(k) for k in keys] if isinstance(keys, tuple) else form.getlist(keys)
        if not parts or any(p is None or isinstance(p, str) for p in parts):
            names = " and ".join(keys) if isinstance(keys, tuple) else keys
            return error(400, f"send the photos as multipart form files named {names}")
        return [(p.filename or f"photo {i + 1}", await p.read()) for i, p in enumerate(parts)]

    @server.exception_handler(RequestValidationError)
    async def bad_parameter(request: Request, exc: RequestValidationError) -> JSONResponse:
        where = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
        return error(400, f"bad request parameter ({where})")

    @server.get(f"{PREFIX}/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @server.get(f"{PREFIX}/people")
    async def people(request: Request) -> JSONResponse:
        return denied(request) or await run(lambda: {"people": faces.people()})

    @server.post(f"{PREFIX}/people")
    async def enroll(request: Request, name: str = "") -> JSONResponse:
        if no := denied(request):
            return no
        photos = await form_files(request, "photos", MAX_PHOTOS)
        if isinstance(photos, JSONResponse):
            return photos

        def work() -> dict[str, Any]:
            r = faces.enroll(name, photos)
            return {"name": r.name, "person_id": r.person_id, "added": r.added, "duplicates": r.duplicates,
                    "problems": r.problems}
        return await run(work)

    @server.delete(f"{PREFIX}/people")
    async def delete(request: Request, name: str = "") -> JSONResponse:
        if no := denied(request):
            return no
        def work() -> dict[str, str]:
            if not any(p["name"] == name for p in faces.people()):
                raise LookupError(f"there is no person named {name!r}")
            faces.delete(name)
            return {"deleted": name}
        return await run(work)

    @server.post(f"{PREFIX}/identify")
    async def identify(request: Request, k: int = 3) -> JSONResponse:
        if no := denied(request):
            return no
        data = await read_body(request)
        if isinstance(data, JSONResponse):
            return data
        return await run(lambda: faces.identify_image(decode_image(data, "photo"), k)[1])

    @server.post(f"{PREFIX}/verify")
    async def verify(request: Request) -> JSONResponse:
        if no := denied(request):
            return no
        photos = await form_files(request, ("a", "b"), 2)
        if isinstance(photos, JSONResponse):
            return photos
        return await run(lambda: faces.verify_images(decode_image(photos[0][1], "photo a"),
                                                     decode_image(photos[1][1], "photo b"))[0])
