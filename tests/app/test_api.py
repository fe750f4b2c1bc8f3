"""The JSON API (``app/api.py``) in process, on real photos and the real face model, through HTTP requests."""
from __future__ import annotations

import base64
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.api import add_api, basic_auth_ok
from app.face_demo import FaceDemo
from app.guard import LoginLimiter
from app.uploads import MAX_UPLOAD_MB
from h_model.faces import FaceVerifier
from tests.app.app_helpers import photos


@pytest.fixture(scope="module")
def demo(tmp_path_factory, face_model: Path) -> FaceDemo:
    faces = FaceDemo(FaceVerifier.load(face_model, device="cpu"), tmp_path_factory.mktemp("api") / "gallery",
                     face_model)
    yield faces
    faces.close()


def api(demo: FaceDemo, auth: tuple[str, str] | None = None, limiter: LoginLimiter | None = None) -> TestClient:
    server = FastAPI()
    add_api(server, demo, auth, limiter=limiter)
    return TestClient(server)


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_basic_auth_header() -> None:
    assert basic_auth_ok(basic("ada", "se:cret")["Authorization"], ("ada", "se:cret"))
    for header in (None, "", "Bearer x", "Basic !!!", basic("ada", "wrong")["Authorization"],
                   basic("bob", "se:cret")["Authorization"], "Basic " + base64.b64encode(b"ada").decode()):
        assert not basic_auth_ok(header, ("ada", "se:cret")), header


def test_enroll_identify_verify_delete(demo: FaceDemo, celeba: list[Path]) -> None:
    c = api(demo)
    assert c.get("/api/v1/health").json() == {"status": "ok"}
    ada, bob = photos(celeba[-1], 3), photos(celeba[-2], 2)
    r = c.post("/api/v1/identify", content=ada[2].read_bytes())
    assert r.status_code == 400 and "gallery is empty" in r.json()["error"]

    for name, ps in (("Ada", ada[:2]), ("Bob", bob)):
        r = c.post("/api/v1/people", params={"name": name}, files=[("photos", (p.name, p.read_bytes())) for p in ps])
        assert r.status_code == 200 and r.json()["added"] == len(ps) and r.json()["name"] == name, r.text
    assert {(p["name"], p["photos"]) for p in c.get("/api/v1/people").json()["people"]} == {("Ada", 2), ("Bob", 2)}

    r = c.post("/api/v1/identify", params={"k": 2}, content=bob[1].read_bytes())
    face = r.json()["faces"][0]  # an enrolled photo: exactly 1.0, ahead of the other person
    assert r.status_code == 200 and face["name"] == "Bob" and face["score"] == 1.0
    assert [m["name"] for m in face["matches"]] == ["Bob", "Ada"] and face["matches"][1]["score"] < 1.0
    assert r.json() == demo.identify(str(bob[1]), 2)[1]  # the same answer as the page's

    # two different photos of one person, then photos of two people: the calibrated threshold tells them apart
    same = c.post("/api/v1/verify", files={"a": ada[0].read_bytes(), "b": ada[1].read_bytes()}).json()
    other = c.post("/api/v1/verify", files={"a": ada[0].read_bytes(), "b": bob[0].read_bytes()}).json()
    threshold = demo.verifier.threshold
    assert same["same"] is True and same["threshold"] == threshold and same["score"] >= threshold + 0.05, same
    assert other["same"] is False and other["threshold"] == threshold and other["score"] <= threshold - 0.05, other
    for r in (same, other):  # one face in each aligned 178x218 photo, boxed inside it
        assert set(r) == {"same", "score", "threshold", "far", "faces", "boxes"} and r["faces"] == [1, 1]
        assert r["far"] == demo.verifier.far and len(r["boxes"]) == 2
        assert all(0 <= x1 < x2 <= 178 and 0 <= y1 < y2 <= 218 for x1, y1, x2, y2 in r["boxes"]), r["boxes"]
    assert same["boxes"][0] == other["boxes"][0]  # the same first photo, found the same way

    assert c.delete("/api/v1/people", params={"name": "Ada"}).json() == {"deleted": "Ada"}
    r = c.delete("/api/v1/people", params={"name": "Ada"})
    assert r.status_code == 404 and "no person named 'Ada'" in r.json()["error"]
    assert [p["name"] for p in c.get("/api/v1/people").json()["people"]] == ["Bob"]
    c.delete("/api/v1/people", params={"name": "Bob"})


def test_bad_requests(demo: FaceDemo, celeba: list[Path], tmp_path: Path) -> None:
    c = api(demo)
    one = photos(celeba[-3], 1)[0]
    c.post("/api/v1/people", params={"name": "Eve"}, files={"photos": (one.name, one.read_bytes())})
    cases = [
        (c.post("/api/v1/identify", content=b""), 400, "request body"),
        (c.post("/api/v1/identify", params={"k": "many"}, content=one.read_bytes()), 400, "query.k"),
        (c.post("/api/v1/identify", content=b"not an image"), 400, "not an image"),
        (c.post("/api/v1/identify", content=b"\0" * (MAX_UPLOAD_MB * 2**20 + 1)), 413, "too large"),
        (c.post("/api/v1/verify", files={"a": one.read_bytes()}), 400, "named a and b"),
        (c.post("/api/v1/verify", files={"a": one.read_bytes(), "b": b"GIF89a broken"}), 400, "photo b"),
        (c.post("/api/v1/people", params={"name": "  "}, files={"photos": one.read_bytes()}), 400, "name"),
        (c.post("/api/v1/people", params={"name": "Zed"}), 400, "multipart"),
        (c.post("/api/v1/people", params={"name": "Zed"}, files=[("photos", b"x")] * 21), 400, "Too many files"),
    ]
    for r, status, text in cases:
        assert r.status_code == status and text in r.json()["error"], (r.status_code, r.text)
    assert [p["name"] for p in c.get("/api/v1/people").json()["people"]] == ["Eve"]  # nothing else got in
    c.delete("/api/v1/people", params={"name": "Eve"})


def test_login(demo: FaceDemo, celeba: list[Path]) -> None:
    c = api(demo, auth=("ada", "se:cret"), limiter=LoginLimiter(attempts=10))  # 5 wrong tries below
    assert c.get("/api/v1/health").status_code == 200
    for method, path in (("get", "/api/v1/people"), ("post", "/api/v1/identify"), ("post", "/api/v1/verify"),
                         ("post", "/api/v1/people"), ("delete", "/api/v1/people")):
        for headers in ({}, basic("ada", "wrong")):
            r = getattr(c, method)(path, headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Basic", (method, path)
    assert c.get("/api/v1/people", headers=basic("ada", "se:cret")).json() == {"people": []}


def test_failed_logins_are_limited_per_client(demo: FaceDemo) -> None:
    c = api(demo, auth=("ada", "se:cret"), limiter=LoginLimiter(attempts=3, window_s=60))
    assert c.get("/api/v1/people").status_code == 401  # no credentials yet: not a failed login
    for _ in range(3):
        assert c.get("/api/v1/people", headers=basic("ada", "guess")).status_code == 401
    for headers in (basic("ada", "guess"), basic("ada", "se:cret")):  # locked out, right password or not
        r = c.get("/api/v1/people", headers=headers)
        assert r.status_code == 429 and 55 <= int(r.headers["retry-after"]) <= 60, r.text
    assert c.get("/api/v1/health").status_code == 200


def test_login_limiter_window() -> None:
    lim = LoginLimiter(attempts=2, window_s=0.2)
    lim.failed("a")
    assert lim.wait_s("a") == 0 and lim.wait_s("b") == 0
    lim.failed("a")
    assert 0 < lim.wait_s("a") <= 0.2 and lim.wait_s("b") == 0  # per client
    import time
    time.sleep(0.25)
    assert lim.wait_s("a") == 0  # the failures aged out
    lim.failed("a")
    lim.succeeded("a")
    lim.failed("a")
    assert lim.wait_s("a") == 0  # a success starts the count again
