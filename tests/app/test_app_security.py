"""The app as a hostile client finds it, on the real server on 127.0.0.1: server paths as inputs on every
route, names that are HTML, one photo under two names, a photo of two people, login guessing, SIGTERM."""
from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import threading
import time
import zipfile
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.app.app_helpers import AppServer, one_face_photos, photos

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

FILE = {"_type": "gradio.FileData"}
HTML_NAME = '<img src=x onerror=alert(1)> *Eve* [x](http://e.vil)'
ESCAPED = "&lt;img src=x onerror=alert(1)&gt; *Eve* [x](http://e.vil)"  # as HTML text (messages)
MARKDOWN = r"&lt;img src=x onerror=alert\(1\)&gt; \*Eve\* \[x\]\(http://e\.vil\)"  # as Markdown text


def ref(path: str | Path) -> dict:
    return {"path": str(path), "meta": FILE}


def payloads(r: dict) -> dict[str, list]:
    """For every endpoint with a file input: its data with ``r`` in each file slot."""
    return {"preview": [[r]], "enroll": ["Mallory", [r]], "enroll_zip": [r], "identify": [r, 3],
            "verify": [r, r], "fewshot_predict": [[{"image": r, "caption": "A"}, {"image": r, "caption": "B"}], r,
                                                  {"background": r, "layers": [r], "composite": r}]}


class HealthWatch:
    """Polls /api/v1/health on entry, every 0.2 s in a thread, and once more on exit (after the work inside
    the block, however fast it was); ``worst`` is the slowest answer (inf: one failed)."""

    def __init__(self, url: str) -> None:
        self.url, self.worst, self.polls = f"{url}api/v1/health", 0.0, 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _poll(self, c: httpx.Client) -> None:
        t0 = time.perf_counter()
        try:
            ok = c.get(self.url).json() == {"status": "ok"}
        except httpx.HTTPError:
            ok = False
        with self._lock:
            self.worst = max(self.worst, time.perf_counter() - t0 if ok else float("inf"))
            self.polls += 1

    def _run(self) -> None:
        with httpx.Client(timeout=5) as c:
            while not self._stop.wait(0.2):
                self._poll(c)

    def __enter__(self) -> "HealthWatch":
        with httpx.Client(timeout=5) as c:
            self._poll(c)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)
        with httpx.Client(timeout=5) as c:
            self._poll(c)


def old_atime(path: Path) -> int:
    """Set ``path``'s access time a day back (modification time now), so any read moves it; return it."""
    os.utime(path, (time.time() - 86400, time.time()))
    return os.stat(path).st_atime_ns


def test_server_paths_are_refused_unread_on_every_route(server: AppServer, tmp_path: Path,
                                                        celeba: list[Path]) -> None:
    upload_dir = Path(server.env["GRADIO_TEMP_DIR"])
    upload_dir.mkdir(parents=True, exist_ok=True)
    outside = tmp_path / "outside.jpg"  # a readable photo, never uploaded
    shutil.copy(photos(celeba[-9], 1)[0], outside)
    archive = tmp_path / "outside.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(outside, "someone/outside.jpg")
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)  # opening it to read would block a server thread for good
    inside = upload_dir / "attack"
    inside.mkdir(exist_ok=True)
    (inside / "link.jpg").unlink(missing_ok=True)
    (inside / "link.jpg").symlink_to(outside)  # inside the upload folder, resolving outside it
    (inside / "pipe.jpg").unlink(missing_ok=True)
    os.mkfifo(inside / "pipe.jpg")
    huge = inside / "huge.jpg"
    with open(huge, "wb") as f:
        f.truncate(60 * 2**20)  # over the 50 MB upload limit (sparse)
    sentinels = [outside, archive, huge]
    stamps = [old_atime(p) for p in sentinels]
    attacks = {
        str(outside): "not a file uploaded", str(archive): "not a file uploaded", "/etc/passwd": "not a file uploaded",
        "/proc/self/environ": "not a file uploaded", "/dev/zero": "not a file uploaded",
        str(fifo): "not a file uploaded", str(tmp_path): "not a file uploaded",
        f"{server.url}api/v1/health": "not a file uploaded", str(inside / "link.jpg"): "not a file uploaded",
        str(upload_dir): "is a folder", str(inside): "is a folder", str(inside / "pipe.jpg"): "not a regular file",
        str(huge): "file too large",
    }
    config = httpx.get(f"{server.url}config", timeout=60).json()
    fn_index = {d["api_name"]: d["id"] for d in config["dependencies"] if d.get("api_name")}
    with HealthWatch(server.url) as health, httpx.Client(base_url=f"{server.url}gradio_api", timeout=30) as c:
        for path, why in attacks.items():
            for api_name, data in payloads(ref(path)).items():
                for r in (c.post(f"/call/{api_name}", json={"data": data}),
                          c.post(f"/run/{api_name}", json={"data": data}),
                          c.post("/queue/join", json={"data": data, "fn_index": fn_index[api_name],
                                                      "session_hash": "attacker", "event_data": None})):
                    assert r.status_code == 400 and why in r.json()["error"], (path, api_name, r.text)
            body = json.dumps({"data": payloads(ref(path))["verify"]})  # the same as a form: never parsed as data
            for r in (c.post("/call/verify", data={"data": body}), c.post("/call/verify", files={"data": body})):
                assert r.status_code == 422, (path, r.text)
        r = c.post("/call/identify", json={"data": ["/etc/passwd", 3]})  # a bare string is no file: Gradio refuses it
        events = c.get(f"/call/identify/{r.json()['event_id']}").text
        assert "event: error" in events and "root:" not in events
    assert health.polls >= 2 and health.worst < 1.0, (health.polls, health.worst)
    assert [os.stat(p).st_atime_ns for p in sentinels] == stamps  # nothing was opened
    copied = [p for p in upload_dir.rglob("*") if p.is_file() and not p.is_symlink() and p != huge]
    assert not [p for p in copied if b"root:" in p.read_bytes()[:4096]]  # /etc/passwd was never copied in
    assert "Mallory" not in [p["name"] for p in httpx.get(f"{server.url}api/v1/people", timeout=60).json()["people"]]
    assert httpx.get(f"{server.url}gradio_api/file={outside}", timeout=30).status_code in (403, 404)
    shutil.rmtree(inside)


def test_an_upload_is_accepted(server: AppServer, celeba: list[Path]) -> None:
    """The same route with a file the client uploaded first: the guard lets it through."""
    photo = photos(celeba[-9], 1)[0]
    with httpx.Client(base_url=f"{server.url}gradio_api", timeout=300) as c:
        [path] = c.post("/upload", files={"files": (photo.name, photo.read_bytes())}).json()
        r = c.post("/call/verify", json={"data": [ref(path), ref(path)]})
        assert r.status_code == 200, r.text
        events = c.get(f"/call/verify/{r.json()['event_id']}").text
    assert "event: complete" in events and "Same person" in events


@pytest.fixture(scope="module")
def client(server: AppServer) -> Client:
    return Client(server.url, verbose=False, analytics_enabled=False, httpx_kwargs={"timeout": 300})


def test_html_in_a_name_is_escaped_in_every_output(client: Client, server: AppServer, celeba: list[Path]) -> None:
    ps = one_face_photos(client, celeba[-10], 2)
    crops, status, result = client.predict(HTML_NAME, [handle_file(str(ps[0]))], api_name="/enroll")
    assert result["name"] == HTML_NAME  # the data is the name itself ...
    assert status == f"Enrolled **{MARKDOWN}**: 1 new photo(s)."
    _, summary, matches, result = client.predict(handle_file(str(ps[0])), 1, api_name="/identify")
    assert result["faces"][0]["name"] == HTML_NAME and summary.startswith(f"Face 1: **{MARKDOWN}**, score 1.000")
    assert f"<figcaption>{ESCAPED} 1.00</figcaption>" in matches  # escaped in the matches' HTML
    assert HTML_NAME not in matches and "<script" not in matches
    with pytest.raises(AppError) as e:  # ... and every message
        client.predict("Mallory", [handle_file(str(ps[0]))], api_name="/enroll")  # shown as HTML is escaped
    assert f"this photo is already enrolled as '{ESCAPED}'" in str(e.value) and "<img" not in str(e.value)
    with pytest.raises(AppError, match="no person named &lt;img") as e:
        client.predict(HTML_NAME + "!", "x", api_name="/rename")
    assert "<img" not in str(e.value)
    client.predict("Mallory <b>", [handle_file(str(ps[1]))], api_name="/enroll")
    with pytest.raises(AppError, match="^A person named 'Mallory &lt;b&gt;' is already enrolled.$"):
        client.predict(HTML_NAME, "Mallory <b>", api_name="/rename")  # (the name's case kept, too)
    with httpx.Client(base_url=f"{server.url}api/v1", timeout=300) as api:
        r = api.delete("/people", params={"name": HTML_NAME + "?"})
        assert r.status_code == 404 and r.json()["error"] == f"there is no person named '{ESCAPED}?'"
        r = api.post("/identify", content=ps[0].read_bytes())
        assert r.json()["faces"][0]["name"] == HTML_NAME
    renamed = client.predict(HTML_NAME, "Eve <i>", api_name="/rename")
    assert renamed == f"Renamed **{MARKDOWN}** to **Eve &lt;i&gt;**."
    assert client.predict("Eve <i>", api_name="/delete") == "Deleted **Eve &lt;i&gt;** and their photos."
    client.predict("Mallory <b>", api_name="/delete")


def test_one_photo_one_person_and_one_face_per_photo(client: Client, server: AppServer, celeba: list[Path],
                                                     tmp_path: Path) -> None:
    ada, bob = one_face_photos(client, celeba[-11], 1), one_face_photos(client, celeba[-12], 1)
    client.predict("Ada", [handle_file(str(ada[0]))], api_name="/enroll")
    with pytest.raises(AppError, match=f"Nothing enrolled for Bob: {ada[0].name}: this photo is already "
                                       "enrolled as 'Ada'"):
        client.predict("Bob", [handle_file(str(ada[0]))], api_name="/enroll")
    _, status, result = client.predict("Bob", [handle_file(str(ada[0])), handle_file(str(bob[0]))],
                                       api_name="/enroll")
    assert result["added"] == 1 and "already enrolled as 'Ada'" in result["skipped"][0] and "skipped" in status
    with httpx.Client(base_url=f"{server.url}api/v1", timeout=300) as api:
        r = api.post("/people", params={"name": "Carol"}, files={"photos": (ada[0].name, ada[0].read_bytes())})
        assert r.status_code == 400 and "already enrolled as 'Ada'" in r.json()["error"]
    pair = Image.new("RGB", (2 * 178, 218))
    for i, p in enumerate((ada[0], bob[0])):
        pair.paste(Image.open(p).convert("RGB"), (178 * i, 0))
    pair.save(tmp_path / "pair.png")  # the two enrolled photos side by side, pixel for pixel
    _, _, _, found = client.predict(handle_file(str(tmp_path / "pair.png")), 1, api_name="/identify")
    assert sorted(f["name"] for f in found["faces"]) == ["Ada", "Bob"]
    with pytest.raises(AppError, match="pair.png: 2 faces found; use a photo of this person alone"):
        client.predict("Dana", [handle_file(str(tmp_path / "pair.png"))], api_name="/enroll")
    crops, status = client.predict([handle_file(str(tmp_path / "pair.png"))], api_name="/preview")
    assert crops == [] and "2 faces found" in status
    people = {p["name"]: p["photos"] for p in client.predict(api_name="/list_people")[2]}
    assert (people.get("Ada"), people.get("Bob"), "Carol" in people, "Dana" in people) == (1, 1, False, False)
    for name in ("Ada", "Bob"):
        client.predict(name, api_name="/delete")


def test_logins_are_limited_and_sigterm_saves_the_index(tmp_path: Path, face_model: Path, celeba: list[Path],
                                                         client: Client) -> None:
    """Failed logins per client (page and API share the count); SIGTERM saves the index and closes the store,
    and the next start adopts that index without rebuilding it."""
    gallery = tmp_path / "gallery"
    app = AppServer(gallery, face_model, tmp_path, auth="ada:se:cret")
    app.cmd += ["--login-attempts", "3"]
    app.start()
    photo = one_face_photos(client, celeba[-13], 1)[0]
    try:
        with httpx.Client(base_url=app.url, timeout=300) as c:
            r = c.post("api/v1/people", params={"name": "Zoe"}, files={"photos": (photo.name, photo.read_bytes())},
                       auth=("ada", "se:cret"))
            assert r.status_code == 200 and r.json()["added"] == 1, r.text
            for _ in range(2):
                assert c.post("login", data={"username": "ada", "password": "guess"}).status_code == 400
            assert c.get("api/v1/people", auth=("ada", "guess")).status_code == 401  # the third failure
            for attempt in ({"username": "ada", "password": "guess"}, {"username": "ada", "password": "se:cret"}):
                r = c.post("login", data=attempt)
                assert r.status_code == 429 and int(r.headers["retry-after"]) > 0 and "too many" in r.json()["error"]
            r = c.get("api/v1/people", auth=("ada", "se:cret"))
            assert r.status_code == 429 and "too many failed logins" in r.json()["error"]
            assert c.get("api/v1/health").status_code == 200
        app.proc.send_signal(signal.SIGTERM)
        assert app.proc.wait(60) == 0
    finally:
        app.stop()
    log = app.log.read_text()
    assert "Gallery closed." in log and "Traceback" not in log, log[-2000:]
    assert (gallery / "index.npz").is_file() and not (gallery / "gallery.sqlite-wal").exists()
    con = sqlite3.connect(gallery / "gallery.sqlite")
    assert con.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0] == 1
    con.close()
    stamp = (gallery / "index.npz").stat().st_mtime_ns

    again = AppServer(gallery, face_model, tmp_path).start()  # a restart, without a login
    try:
        r = httpx.post(f"{again.url}api/v1/identify", content=photo.read_bytes(), timeout=300)
        assert r.json()["faces"][0]["name"] == "Zoe" and r.json()["faces"][0]["score"] == 1.0
    finally:
        again.stop()
    assert "Gallery gallery: 1 people, search index IndexIDMap" in again.log.read_text()
    assert (gallery / "index.npz").stat().st_mtime_ns == stamp  # adopted as saved, never rebuilt
    assert not (gallery / "gallery.sqlite-wal").exists()
