"""The demo's logic without a server: upload checks, zip reading, sketches, model choice, FaceDemo."""
from __future__ import annotations

import base64
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.app import parse_auth
from app.face_demo import FaceDemo, resolve_face_model
from app.fewshot_demo import sketch_to_image
from app.ui import matches_html
from app.uploads import InputError, check_name, check_upload, decode_image, escape_markdown, read_bytes, zip_people
from h_model.faces import FaceVerifier, NoModelError
from tests.app.app_helpers import photos


def png(size: tuple[int, int] = (32, 32), mode: str = "RGB", fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format=fmt)
    return buf.getvalue()


def test_names() -> None:
    assert check_name("  Ada   Lovelace ") == "Ada Lovelace"
    assert check_name("../../etc/passwd") == "../../etc/passwd"  # a name is only ever data
    for bad, why in (("", "Give"), ("   ", "Give"), ("x" * 65, "at most 64"), ("a\x00b", "control")):
        with pytest.raises(InputError, match=why):
            check_name(bad)


def test_image_checks(tmp_path: Path) -> None:
    assert decode_image(png(), "p").size == (32, 32)
    assert decode_image(png(mode="L", fmt="BMP"), "p").mode == "RGB"
    with pytest.raises(InputError, match="not an image"):
        decode_image(b"hello, world", "p")
    with pytest.raises(InputError, match="not an image"):
        decode_image(png()[:40], "p")  # truncated
    with pytest.raises(InputError, match="unsupported image type PCX"):
        decode_image(png(fmt="PCX"), "p")
    with pytest.raises(InputError, match="too large .*megapixels"):
        decode_image(png((8000, 6000), mode="1"), "p")
    with pytest.raises(InputError, match="file too large"):
        decode_image(b"\xff" * (11 * 2**20), "p")
    svg = tmp_path / "x.svg"
    svg.write_text("<svg/>")
    with pytest.raises(InputError, match="unsupported file type .svg"):
        read_bytes(svg)
    with pytest.raises(InputError, match="Upload a photo"):
        read_bytes(None)


def test_check_upload_refuses_before_reading(tmp_path: Path) -> None:
    import os

    folder = tmp_path / "uploads"
    folder.mkdir()
    ok = folder / "a.png"
    ok.write_bytes(png())
    assert check_upload(ok, folder) == ok.resolve() and read_bytes(ok) == png()
    outside = tmp_path / "b.png"
    outside.write_bytes(png())
    (folder / "link.png").symlink_to(outside)
    os.mkfifo(folder / "pipe.png")
    with open(folder / "big.png", "wb") as f:
        f.truncate(11 * 2**20)
    cases = [(outside, "not a file uploaded"), (folder / "link.png", "not a file uploaded"),
             ("/etc/passwd", "not a file uploaded"), ("/dev/zero", "not a file uploaded"),
             (folder / "../b.png", "not a file uploaded"), (folder, "is a folder"),
             (folder / "pipe.png", "not a regular file"), (folder / "big.png", "file too large"),
             (folder / "gone.png", "could not be found")]
    for path, why in cases:
        with pytest.raises(InputError, match=why):
            check_upload(path, folder)
    for path, why in (("/dev/zero", "not a regular file"), (folder, "is a folder"), (folder / "pipe.png", "regular"),
                      (folder / "big.png", "too large")):  # without a folder (a photo handed to the demo)
        with pytest.raises(InputError, match=why):
            read_bytes(path)


def test_escape_markdown() -> None:
    assert escape_markdown("Ada") == "Ada"
    assert escape_markdown("<b>*x*</b> [a](b) & _y_") == r"&lt;b&gt;\*x\*&lt;/b&gt; \[a\]\(b\) &amp; \_y\_"


def test_matches_html(tmp_path: Path) -> None:
    jpeg = tmp_path / "t.jpg"
    Image.new("RGB", (4, 4), (200, 10, 10)).save(jpeg, format="JPEG")
    out = matches_html([(jpeg, "<b>Al</b> ${x} {{y}} 0.91"), (Image.new("L", (3, 3)), "Bo & Co 0.50")])
    assert out.count("<figure>") == 2 and out.count('<img src="data:image/jpeg;base64,') == 2
    assert base64.b64encode(jpeg.read_bytes()).decode() in out  # the stored file, sent as it is
    assert "<figcaption>&lt;b&gt;Al&lt;/b&gt; &#36;&#123;x&#125; &#123;&#123;y&#125;&#125; 0.91</figcaption>" in out
    assert "<figcaption>Bo &amp; Co 0.50</figcaption>" in out and "<b>" not in out and "${" not in out
    assert matches_html([]) == '<div class="h-matches"></div>'


def test_zip_people(tmp_path: Path) -> None:
    path = tmp_path / "people.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("alice/1.jpg", png(fmt="JPEG"))
        z.writestr("alice/2.png", png())
        z.writestr("top/bob/1.png", png())
        z.writestr("../evil/1.png", png())
        z.writestr("/abs/1.png", png())
        z.writestr("__MACOSX/alice/._1.jpg", b"junk")
        z.writestr("carol/notes.txt", b"text")
        z.writestr("loose.png", png())
    people = zip_people(path)
    assert list(people) == ["alice", "bob"]
    assert [n for n, _ in people["alice"]] == ["1.jpg", "2.png"] and people["bob"][0][1] == png()
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x/1.png", b"\0" * (60 * 2**20))
    assert bomb.stat().st_size < 2**20
    with pytest.raises(InputError, match="too much data"):
        zip_people(bomb)
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK not really")
    with pytest.raises(InputError, match="not a zip"):
        zip_people(bad)
    with pytest.raises(InputError, match="upload a .zip"):
        zip_people(tmp_path / "x.tar")


def test_auth_and_sketch() -> None:
    assert parse_auth(None) is None and parse_auth("") is None
    assert parse_auth("ada:se:cret") == ("ada", "se:cret")
    for bad in ("ada", ":pw", "ada:"):
        with pytest.raises(SystemExit):
            parse_auth(bad)
    canvas = np.zeros((280, 280, 4), np.uint8)  # transparent
    assert sketch_to_image({"composite": canvas}) is None and sketch_to_image(None) is None
    canvas[100:180, 138:146] = (0, 0, 0, 255)  # a vertical stroke
    img = sketch_to_image({"composite": canvas, "layers": []})
    a = np.asarray(img)
    assert img.size == (105, 105) and a.min() == 0 and a.max() == 255
    assert a[:, 52].min() == 0 and a[:, 5].min() == 255  # centred: ink in the middle, paper at the side


def test_resolve_face_model(tmp_path: Path) -> None:
    from h_model import create_model, save_checkpoint
    from h_model.preprocess import Preprocess

    prep = Preprocess(size=(32, 32), channels=3).to_dict()
    save_checkpoint(tmp_path / "runs" / "a", create_model("proto", "conv4", {"in_channels": 3}), {"preprocess": prep})
    save_checkpoint(tmp_path / "runs" / "b", create_model("proto", "resnet12", {"in_channels": 3, "channels": [4] * 4}),
                    {"preprocess": prep})
    assert resolve_face_model(tmp_path / "runs" / "a") == tmp_path / "runs" / "a"
    assert resolve_face_model(tmp_path / "runs", "resnet12") == tmp_path / "runs" / "b"
    with pytest.raises(NoModelError, match="2 face models"):
        resolve_face_model(tmp_path / "runs")
    with pytest.raises(NoModelError, match="backbone 'resnet12'"):
        resolve_face_model(tmp_path / "runs" / "a", "resnet12")
    with pytest.raises(FileNotFoundError):
        resolve_face_model(tmp_path / "nothing")


def test_face_demo_enroll_edit_identify_persist(tmp_path: Path, face_model: Path, celeba: list[Path],
                                                data_root: Path) -> None:
    v = FaceVerifier.load(face_model, device="cpu")
    ada, bob = photos(celeba[-1], 2), photos(celeba[-2], 1)
    char = next((data_root / "omniglot-py" / "images_evaluation").rglob("*.png"))  # no face in it
    items = [(p.name, p.read_bytes()) for p in [*ada, char]] + [("bad.jpg", b"nope")]
    demo = FaceDemo(v, tmp_path / "g", face_model)
    crops, problems = demo.preview([str(p) for p in ada])
    assert len(crops) == 2 and not problems
    assert demo.model_info()["model"] == face_model.name and demo.model_info()["gallery"]["name"] == "g"
    r = demo.enroll("../../Ada", items)
    assert (r.added, r.duplicates, len(r.crops)) == (2, 0, 2)
    assert any("no face" in p for p in r.problems) and any("not an image" in p for p in r.problems)
    assert demo.enroll("../../Ada", items[:1]).duplicates == 1
    demo.enroll("Bob", [(p.name, p.read_bytes()) for p in bob])
    with pytest.raises(InputError, match="Nothing enrolled"):
        demo.enroll("Nobody", items[2:])
    ids = {p["name"]: p["person_id"] for p in demo.people()}
    thumbs = sorted(p.name for p in (tmp_path / "g" / "thumbs").iterdir())
    assert thumbs == sorted(f"{i}.jpg" for i in ids.values())  # named by id, never by name
    assert not (tmp_path / "Ada").exists()

    boxed, res, thumbs = demo.identify(str(ada[0]), k=2)
    assert res["faces"][0]["name"] == "../../Ada" and not res["faces"][0]["unknown"]
    ranked = res["faces"][0]["matches"]  # an enrolled photo: exactly 1.0, the other person below the threshold
    assert [m["name"] for m in ranked] == ["../../Ada", "Bob"] and ranked[0]["score"] == 1.0
    assert ranked[1]["score"] < v.threshold and res["threshold"] == v.threshold
    assert boxed.size == Image.open(ada[0]).size and len(thumbs) == 2
    demo.gallery.threshold = 1.01  # nobody can be that similar: every face is unknown
    _, res, _ = demo.identify(str(ada[0]))
    assert res["faces"][0]["unknown"] and res["faces"][0]["label"] == "unknown" and res["faces"][0]["name"] is None
    demo.gallery.threshold = v.threshold
    with pytest.raises(InputError, match="No face found"):
        demo.identify(str(char))

    assert demo.rename("../../Ada", "Ada") == r"Renamed **\.\./\.\./Ada** to **Ada**."  # the name escaped
    with pytest.raises(InputError, match="^A person named 'Bob' is already enrolled.$"):
        demo.rename("Ada", "Bob")
    with pytest.raises(InputError, match="no person named"):
        demo.delete("Carol")
    assert demo.delete("Bob") == "Deleted **Bob** and their photos."
    assert not (tmp_path / "g" / "thumbs" / f"{ids['Bob']}.jpg").exists()
    assert [p["name"] for p in demo.people()] == ["Ada"]
    demo.close()

    again = FaceDemo(FaceVerifier.load(face_model, device="cpu"), tmp_path / "g", face_model)  # a restart
    assert again.people() == [{"name": "Ada", "person_id": ids["../../Ada"], "photos": 2}]
    assert again.people_gallery()[0][1] == "Ada (2 photos)"
    assert again.identify(str(ada[1]))[1]["faces"][0]["matches"][0]["name"] == "Ada"
    assert again.delete("Ada") == "Deleted **Ada** and their photos." and again.people() == []
    assert not (tmp_path / "g" / "thumbs" / f"{ids['../../Ada']}.jpg").exists()
    with pytest.raises(InputError, match="gallery is empty"):
        again.identify(str(ada[0]))
    again.close()


def test_enroll_dir_command(tmp_path: Path, face_model: Path, celeba: list[Path], data_root: Path, capsys) -> None:
    import json

    from app.app import main

    people = tmp_path / "people"
    for person in celeba[-6:-4]:
        (people / f"person {person.name}").mkdir(parents=True)
        for p in photos(person, 2):
            (people / f"person {person.name}" / p.name).write_bytes(p.read_bytes())
    (people / "notes.txt").write_text("not a folder of photos")
    (people / "nobody").mkdir()
    char = next((data_root / "omniglot-py" / "images_evaluation").rglob("*.png"))
    (people / "nobody" / "char.png").write_bytes(char.read_bytes())
    args = ["enroll-dir", str(people), "--gallery", str(tmp_path / "g"), "--model", str(face_model)]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["persons"], summary["added"]) == (2, 4)
    assert summary["skipped"] == ["Nothing enrolled for nobody: nobody/char.png: no face found."]
    assert main(args) == 0 and json.loads(capsys.readouterr().out)["duplicates"] == 4  # idempotent
    assert main(["enroll-dir", str(people), "--gallery", str(tmp_path / "g2"), "--model", str(tmp_path)]) == 2
    assert "face models" in capsys.readouterr().err
