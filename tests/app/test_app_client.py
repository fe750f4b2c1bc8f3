"""Every endpoint through ``gradio_client`` against a running app, bad uploads, concurrency and load."""
from __future__ import annotations

import threading
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.app.app_helpers import REPO, AppServer, one_face_photos, photos

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402


@pytest.fixture(scope="module")
def client(server: AppServer) -> Client:
    return Client(server.url, verbose=False, analytics_enabled=False, httpx_kwargs={"timeout": 300})


def files(paths: list[Path]) -> list:
    return [handle_file(str(p)) for p in paths]


def strings(value) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return [value] if isinstance(value, str) else []


def test_model_info(client: Client, face_model: Path) -> None:
    info = client.predict(api_name="/model_info")
    assert info["model"] == face_model.name and info["model_id"].startswith("sha256:")
    assert info["backbone"] and "crop_size" in info["crop"] and info["gallery"] == {"name": "gallery", "people": 0}
    assert not [s for s in strings(info) if "/" in s]  # names, never server paths


def test_enroll_identify_verify_edit(client: Client, celeba: list[Path]) -> None:
    ada, bob = photos(celeba[-1], 2), photos(celeba[-2], 2)
    crops, status = client.predict(files(ada), api_name="/preview")
    assert len(crops) == 2 and "2 face(s) found" in status
    crops, status, result = client.predict("Ada", files(ada), api_name="/enroll")
    assert result["added"] == 2 and "Enrolled **Ada**" in status
    client.predict("Bob", files(bob), api_name="/enroll")
    _, _, people = client.predict(api_name="/list_people")
    assert {(p["name"], p["photos"]) for p in people} == {("Ada", 2), ("Bob", 2)}

    boxed, summary, matches, result = client.predict(handle_file(str(bob[1])), 2, api_name="/identify")
    face = result["faces"][0]  # an enrolled photo: its person, scoring exactly 1.0, matches sorted by score
    assert face["name"] == "Bob" and not face["unknown"] and face["score"] == 1.0 and "**Bob**" in summary
    assert [m["name"] for m in face["matches"]] == ["Bob", "Ada"] and face["matches"][1]["score"] < 1.0
    assert Image.open(boxed).size == Image.open(bob[1]).size  # the matches come inline: no file to download
    assert matches.count("<img src=\"data:image/jpeg;base64,") == 2 and "<figcaption>Bob 1.00</figcaption>" in matches

    verdict, pair, r = client.predict(handle_file(str(ada[0])), handle_file(str(ada[0])), api_name="/verify")
    assert r["same"] and r["score"] > 0.99 and "Same person" in verdict
    verdict, pair, r = client.predict(handle_file(str(ada[0])), handle_file(str(bob[0])), api_name="/verify")
    assert r["same"] == (r["score"] >= r["threshold"]) and f"threshold {r['threshold']:.3f}" in verdict
    assert Image.open(pair).width > Image.open(pair).height  # two crops side by side

    assert "Renamed" in client.predict("Bob", "Robert", api_name="/rename")
    assert "Deleted" in client.predict("Ada", api_name="/delete")
    _, _, people = client.predict(api_name="/list_people")
    assert [p["name"] for p in people] == ["Robert"]
    assert client.predict(handle_file(str(bob[1])), 1, api_name="/identify")[3]["faces"][0]["name"] == "Robert"
    client.predict("Robert", api_name="/delete")


def test_bad_input_is_a_message(client: Client, server: AppServer, tmp_path: Path, celeba: list[Path],
                                data_root: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    fake = tmp_path / "fake.jpg"
    fake.write_bytes(b"this is not a jpeg")
    svg = tmp_path / "drawing.svg"
    svg.write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    big = tmp_path / "big.png"  # a real image over the 10 MB photo limit
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (2000, 2000, 3), dtype=np.uint8)).save(big)
    huge = tmp_path / "huge.jpg"  # over the server's upload limit
    huge.write_bytes(b"\xff" * (60 * 2**20))
    char = next((data_root / "omniglot-py" / "images_evaluation").rglob("*.png"))
    cases = [
        ((handle_file(str(fake)), 3), "/identify", "not an image"),
        ((handle_file(str(text)), 3), "/identify", "not an image"),
        ((handle_file(str(svg)), 3), "/identify", "unsupported file type .svg"),
        ((handle_file(str(big)), 3), "/identify", "file too large"),
        ((None, 3), "/identify", "Upload a photo first"),
        ((handle_file(str(char)), 3), "/identify", "gallery is empty"),
        (("Eve", files([text])), "/enroll", "Invalid file type"),
        (("Eve", files([fake])), "/enroll", "Nothing enrolled for Eve"),
        (("Eve", files([char])), "/enroll", "no face found"),
        (("", files([fake])), "/enroll", "Give the person a name"),
        (("Eve", None), "/enroll", "Add at least one photo"),
        ((handle_file(str(fake)),), "/enroll_zip", "Invalid file type"),
        (("Nobody", "Somebody"), "/rename", "no person named Nobody"),
        (("Nobody",), "/delete", "no person named Nobody"),
        ((handle_file(str(char)), handle_file(str(fake))), "/verify", "not an image"),
    ]
    for args, endpoint, message in cases:
        with pytest.raises(AppError, match=message):
            client.predict(*args, api_name=endpoint)
    with pytest.raises(ValueError, match="exceeds the maximum file size"):  # the client reads the limit
        client.predict(handle_file(str(huge)), 3, api_name="/identify")
    with open(huge, "rb") as f:  # and the server enforces it for anyone else
        r = httpx.post(f"{server.url}gradio_api/upload", files={"files": ("huge.jpg", f)}, timeout=300)
    assert r.status_code == 413 and "size" in r.text.lower()
    client.predict("Eve", files(photos(celeba[-3], 1)), api_name="/enroll")
    with pytest.raises(AppError, match="No face found"):
        client.predict(handle_file(str(char)), 3, api_name="/identify")
    assert server.alive()
    eve = handle_file(str(photos(celeba[-3], 1)[0]))
    assert client.predict(eve, 1, api_name="/identify")[3]["faces"][0]["name"] == "Eve"
    client.predict("Eve", api_name="/delete")


def test_gallery_and_code_are_not_served(server: AppServer) -> None:
    for path in (server.gallery / "gallery.sqlite", server.gallery / "thumbs", REPO / "README.md"):
        r = httpx.get(f"{server.url}gradio_api/file={path}", timeout=120)
        assert r.status_code in (403, 404), (path, r.status_code)


def test_fewshot(client: Client, tmp_path: Path) -> None:
    support, query, truth = client.predict(5, 3, api_name="/fewshot_sample")
    assert [s["caption"] for s in support] == list("ABCDE")
    sup = [{"image": handle_file(s["image"]), "caption": s["caption"]} for s in support]
    _, r = client.predict(sup, handle_file(query), None, api_name="/fewshot_predict")
    assert r["classes"] == list("ABCDE") and abs(sum(r["probs"]) - 1) < 1e-4 and r["query"] == "image"
    assert f"**{r['predicted']}**" in truth  # the bundled Omniglot model gets this episode right
    # a query drawn on the sketchpad: the support drawing of B, as dark strokes on a transparent canvas
    ink = np.asarray(Image.open(support[1]["image"]).convert("L").resize((280, 280))) < 128
    canvas = np.zeros((280, 280, 4), np.uint8)
    canvas[ink] = (0, 0, 0, 255)
    Image.fromarray(canvas).save(tmp_path / "sketch.png")
    sketch = {"background": None, "layers": [], "composite": handle_file(str(tmp_path / "sketch.png"))}
    _, r = client.predict(sup, None, sketch, api_name="/fewshot_predict")
    assert r["query"] == "sketch" and r["predicted"] == "B"
    with pytest.raises(AppError, match="at least two different"):
        client.predict(sup[:1], handle_file(query), None, api_name="/fewshot_predict")
    with pytest.raises(AppError, match="Give a query"):
        client.predict(sup, None, None, api_name="/fewshot_predict")


def test_concurrent_enrollments_stay_apart(client: Client, celeba: list[Path]) -> None:
    people = {f"person {i}": one_face_photos(client, celeba[-4 - i], 2) for i in range(4)}
    jobs = {name: client.submit(name, files(ps), api_name="/enroll") for name, ps in people.items()}
    for name, job in jobs.items():
        assert job.result(timeout=300)[2]["added"] == 2
    listed = {p["name"]: p["photos"] for p in client.predict(api_name="/list_people")[2]}
    assert {n: listed.get(n) for n in people} == {n: 2 for n in people}
    for name, ps in people.items():  # an enrolled photo finds its own stored embedding, under its own name
        matches = client.predict(handle_file(str(ps[1])), 4, api_name="/identify")[3]["faces"][0]["matches"]
        assert matches[0] == {"name": name, "person_id": matches[0]["person_id"], "score": 1.0}
        assert [m["score"] for m in matches] == sorted((m["score"] for m in matches), reverse=True)
    for name in people:
        client.predict(name, api_name="/delete")


def test_bulk_zip_and_load(client: Client, celeba: list[Path], tmp_path: Path) -> None:
    """100 people enrolled from a zip; 20 identify requests at once from this process: all right, none lost."""
    chosen = {p.name: photos(p, 1)[0] for p in celeba[:100]}
    archive = tmp_path / "people.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name, photo in chosen.items():
            z.write(photo, f"people/{name}/{photo.name}")
    status, summary = client.predict(handle_file(str(archive)), api_name="/enroll_zip")
    assert summary["persons"] >= 90 and "Enrolled" in status
    assert summary["persons"] + len(summary["skipped"]) == len(chosen)  # a person skipped is said why:
    assert all(" no face found." in s or " faces found; " in s for s in summary["skipped"])  # no face, or several
    enrolled = sorted({p["name"] for p in client.predict(api_name="/list_people")[2]} & set(chosen))
    assert len(enrolled) == summary["persons"]

    queries = enrolled[:20]
    start: dict[str, float] = {}
    lat: dict[str, float] = {}
    answers: dict[str, str | None] = {}

    def ask(name: str) -> None:
        start[name] = time.perf_counter()
        r = client.predict(handle_file(str(chosen[name])), 1, api_name="/identify")
        lat[name] = time.perf_counter() - start[name]
        answers[name] = r[3]["faces"][0]["name"]

    threads = [threading.Thread(target=ask, args=(n,)) for n in queries]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    wall = time.perf_counter() - t0
    assert answers == {n: n for n in queries}  # all 20 answered, each with the right person
    ms = np.array([lat[n] for n in queries]) * 1000
    print(f"\nload: 20 concurrent identify, gallery of {len(enrolled)} people: p50 {np.percentile(ms, 50):.0f} ms, "
          f"p95 {np.percentile(ms, 95):.0f} ms, all done in {wall:.1f} s")


def test_json_api_beside_the_page(client: Client, server: AppServer, celeba: list[Path]) -> None:
    """The JSON routes are served by the same process, on the same gallery, before Gradio's catch-all mount."""
    ps = one_face_photos(client, celeba[-8], 1)
    with httpx.Client(base_url=f"{server.url}api/v1", timeout=300) as api:
        r = api.post("/people", params={"name": "Quinn"}, files={"photos": (ps[0].name, ps[0].read_bytes())})
        assert r.status_code == 200 and r.json()["added"] == 1, r.text
        assert "Quinn" in [p["name"] for p in client.predict(api_name="/list_people")[2]]
        r = api.post("/identify", content=ps[0].read_bytes())  # the enrolled photo finds its own embedding
        assert r.status_code == 200 and r.json()["faces"][0]["name"] == "Quinn", r.text
        assert r.json()["faces"][0]["score"] == 1.0
        assert api.post("/identify", content=b"junk").status_code == 400
        assert api.delete("/people", params={"name": "Quinn"}).json() == {"deleted": "Quinn"}
