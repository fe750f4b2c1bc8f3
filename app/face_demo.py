"""The face side of the demo, free of any UI: enroll, list, rename, delete, identify, verify.

Everything goes through :mod:`h_model.faces`: the verifier's detector finds and aligns faces, its
model embeds them, the :class:`~h_model.faces.Gallery` stores and searches them (each person scored
by the best cosine to any of their photos). The demo adds one thing the gallery does not keep: a
thumbnail per person, ``<gallery>/thumbs/<person id>.jpg``, named by the gallery's integer id (never
by a name). An enrollment photo must show exactly one face. Messages meant for Markdown escape
every user-supplied string (:func:`~app.uploads.escape_markdown`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from h_model.checkpoint import atomic_write, resolve_checkpoint
from h_model.faces import FaceVerifier, Gallery, NoFaceError, NoModelError
from h_model.faces.detect import image_sha256
from h_model.faces.folders import person_folders
from h_model.faces.verifier import bundled_face_model

from .uploads import InputError, check_name, decode_image, escape_markdown, read_bytes, read_upload

MAX_PHOTOS = 20   # per enrollment
MAX_FACES = 10    # labelled per identify photo
THUMB = 112


@dataclass
class Detected:
    """One enrollment photo: its face's aligned crop (``None`` with ``problem`` when unusable: no face,
    or more than one)."""

    label: str
    data: bytes
    crop: Image.Image | None = None
    faces: int = 0
    problem: str | None = None


@dataclass
class EnrollOutcome:
    name: str
    person_id: int
    added: int
    duplicates: int
    problems: list[str] = field(default_factory=list)
    crops: list[tuple[Image.Image, str]] = field(default_factory=list)

    def message(self) -> str:
        """Markdown: what was enrolled and what was skipped (user-supplied names and file names escaped)."""
        text = f"Enrolled **{escape_markdown(self.name)}**: {self.added} new photo(s)"
        if self.duplicates:
            text += f", {self.duplicates} already enrolled"
        return text + "." + skipped_markdown(self.problems)


def skipped_markdown(problems: list[str]) -> str:
    """Markdown list items ``- skipped <problem>``, each problem escaped."""
    return "".join(f"\n- skipped {escape_markdown(p)}" for p in problems)


def resolve_face_model(model: str | Path | None, backbone: str | None = None) -> Path:
    """The face checkpoint to load: ``model`` (a run directory, a weights file, or a folder of run
    directories), else the bundled one; ``backbone`` picks among several and must match."""
    if model is None:
        candidates = [bundled_face_model("start the app with --model PATH (a face checkpoint)")]
    else:
        p = Path(model).expanduser()
        if p.is_file() or (p / "model.safetensors").is_file():
            candidates = [p]
        elif p.is_dir():
            candidates = sorted(d for d in p.iterdir() if (d / "model.safetensors").is_file())
        else:
            raise FileNotFoundError(f"no face model at {p}")
    if backbone:
        candidates = [c for c in candidates if checkpoint_config(c)["model"]["backbone"] == backbone]
    if len(candidates) != 1:
        what = f"with backbone {backbone!r} " if backbone else ""
        raise NoModelError(f"{len(candidates)} face models {what}found at {model}: pass one run directory "
                           "with --model, or --backbone NAME to pick one")
    return candidates[0]


def model_name(path: str | Path) -> str:
    """A checkpoint's name for display (its run directory's or weights file's name), never its path."""
    return Path(path).name


def checkpoint_config(path: str | Path) -> dict[str, Any]:
    return json.loads(resolve_checkpoint(path)[1].read_text())


def measured(path: str | Path) -> dict[str, float]:
    """Accuracy-like figures of a checkpoint: from its config's ``face`` entry and its ``results.json``."""
    cfg_path = resolve_checkpoint(path)[1]
    sources = [checkpoint_config(path).get("face") or {}]
    if (cfg_path.parent / "results.json").is_file():
        sources.append(json.loads((cfg_path.parent / "results.json").read_text()))

    def is_metric(key: str) -> bool:
        return any(w in key.lower() for w in ("acc", "auc", "tar"))

    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    found: dict[str, float] = {}
    for src in sources:
        for key, val in src.items():
            if number(val) and is_metric(key):
                found[key] = float(val)
            elif isinstance(val, dict):
                for k2, v2 in val.items():
                    if number(v2) and (is_metric(key) or is_metric(k2)):
                        found[f"{key} {k2}"] = float(v2)
    return found


def placeholder(name: str, size: int = THUMB) -> Image.Image:
    """A grey square with the name's first letter (for people enrolled without the app)."""
    img = Image.new("RGB", (size, size), (200, 200, 205))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=size // 2)
    draw.text((size / 2, size / 2), (name[:1] or "?").upper(), fill=(90, 90, 100), font=font, anchor="mm")
    return img


def draw_faces(img: Image.Image, boxes: list[np.ndarray], labels: list[str], known: list[bool]) -> Image.Image:
    """A copy of ``img`` with each face boxed (green: known, orange: unknown) and labelled."""
    out = img.copy()
    draw = ImageDraw.Draw(out)
    width = max(2, round(max(img.size) / 250))
    font = ImageFont.load_default(size=max(12, round(max(img.size) / 30)))
    for box, label, ok in zip(boxes, labels, known):
        color = (40, 180, 80) if ok else (240, 140, 20)
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle((x1, y1, x2, y2), outline=color, width=width)
        tb = draw.textbbox((x1, y1), label, font=font, anchor="lb")
        draw.rectangle((tb[0] - 2, tb[1] - 2, tb[2] + 2, tb[3] + 2), fill=color)
        draw.text((x1, y1), label, fill=(255, 255, 255), font=font, anchor="lb")
    return out


def side_by_side(a: Image.Image, b: Image.Image, gap: int = 8) -> Image.Image:
    h = max(a.height, b.height)
    out = Image.new("RGB", (a.width + gap + b.width, h), (255, 255, 255))
    out.paste(a, (0, 0))
    out.paste(b, (a.width + gap, 0))
    return out


class FaceDemo:
    """A face model and the gallery it searches; every method is safe to call from many threads."""

    def __init__(self, verifier: FaceVerifier, gallery_dir: str | Path, model_path: str | Path,
                 allow_shared_photos: bool = False) -> None:
        self.verifier = verifier
        self.model_path = Path(model_path)
        self.gallery = Gallery(gallery_dir, verifier=verifier, allow_shared_photos=allow_shared_photos)
        self.thumbs = self.gallery.path / "thumbs"
        self.thumbs.mkdir(exist_ok=True)

    def close(self) -> None:
        self.gallery.close()

    # -- the model panel -----------------------------------------------------------------------
    def model_info(self) -> dict[str, Any]:
        """What the model panel shows: names, never server paths."""
        cfg = self.verifier.learner.config
        spec = cfg.get("model") or {}
        return {"model": model_name(self.model_path), "model_id": self.verifier.model_id,
                "variant": spec.get("variant"), "backbone": spec.get("backbone"),
                "threshold": self.verifier.threshold, "far": self.verifier.far,
                "crop": {k: model_name(v) if isinstance(v, (str, Path)) and "/" in str(v) else v
                         for k, v in self.verifier.detector.settings.items()},
                "measured": measured(self.model_path),
                "gallery": {"name": self.gallery.path.name, "people": len(self.gallery)}}

    # -- enrollment ----------------------------------------------------------------------------
    def detect(self, items: list[tuple[str, bytes]], embed: bool = False
               ) -> tuple[list[Detected], np.ndarray | None]:
        """Decode each photo and find its one face (problems are recorded, never raised): a photo with
        several faces is refused, since which of them is the person cannot be told. ``embed``: also the
        embeddings (``normalize=False``) of the photos with a face, in order."""
        found = [Detected(label, data) for label, data in items]
        decoded: list[tuple[Detected, Image.Image]] = []
        for d in found:
            try:
                decoded.append((d, decode_image(d.data, d.label)))
            except InputError as e:
                d.problem = str(e)
        images = [img for _, img in decoded]
        z = None
        if embed:
            z, reasons, faces = self.verifier.embed_each(images, normalize=False, max_faces=1, return_faces=True)
        else:
            faces, reasons = self.verifier.find_each(images, max_faces=1)
        for (d, _), fs, why in zip(decoded, faces, reasons):
            d.faces = len(fs)
            if why is None:
                d.crop = fs[0].crop
            elif fs:
                d.problem = f"{d.label}: {len(fs)} faces found; use a photo of this person alone (or crop it)."
            else:
                d.problem = f"{d.label}: no face found." if why.startswith("NoFaceError") else f"{d.label}: {why}."
        return found, z

    def preview(self, paths: list[str] | None) -> tuple[list[tuple[Image.Image, str]], list[str]]:
        """The aligned crops that enrolling these uploads would save, and what would be skipped."""
        found, _ = self.detect(upload_items(paths))
        return [(d.crop, d.label) for d in found if d.crop is not None], [d.problem for d in found if d.problem]

    def enroll(self, name: str | None, items: list[tuple[str, bytes]]) -> EnrollOutcome:
        """Add a person (or more photos of one): each photo's one face, embedded by the model. A photo
        already enrolled under another name is skipped with that name (unless shared photos are allowed)."""
        name = check_name(name)
        if not items:
            raise InputError("Add at least one photo.")
        if len(items) > MAX_PHOTOS:
            raise InputError(f"At most {MAX_PHOTOS} photos at a time.")
        return self._store(name, *self.detect(items, embed=True))

    def _store(self, name: str, found: list[Detected], z: np.ndarray | None) -> EnrollOutcome:
        """Save a person's detected photos (``z``: the embeddings of those with a face, in order)."""
        ok = [d for d in found if d.crop is not None]
        problems = [d.problem for d in found if d.problem]
        if ok and z is not None:
            r = self.gallery.enroll(name, embeddings=z, model_id=self.verifier.model_id, skip_failures=True,
                                    sources=[d.label for d in ok], sha256s=[image_sha256(d.data) for d in ok])
            problems += [f"{source}: {why}." for source, why in r.skipped]
            taken = {source for source, _ in r.skipped}
            ok = [d for d in ok if d.label not in taken]
        if not ok:
            raise InputError(f"Nothing enrolled for {name}: " + " ".join(problems))
        self._save_thumb(r.person_id, ok[0].crop)
        return EnrollOutcome(r.name, r.person_id, r.added, r.duplicates, problems, [(d.crop, d.label) for d in ok])

    def enroll_many(self, people: Iterable[tuple[str, list[tuple[str, bytes]]]], batch: int = 64) -> dict[str, Any]:
        """Bulk enrollment from (name, photos) pairs, detecting and embedding about ``batch`` photos at a
        time across people; one person's problems never stop the rest."""
        summary: dict[str, Any] = {"persons": 0, "added": 0, "duplicates": 0, "skipped": []}
        pending: list[tuple[str, list[tuple[str, bytes]]]] = []
        stored: set[str] = set()

        def flush() -> None:
            found, z = self.detect([item for _, items in pending for item in items], embed=True)
            ok = [d for d in found if d.crop is not None]
            rows = {id(d): i for i, d in enumerate(ok)}
            start = 0
            for name, items in pending:
                part = found[start:start + len(items)]
                start += len(items)
                idx = [rows[id(d)] for d in part if d.crop is not None]
                try:
                    r = self._store(name, part, z[idx] if idx else None)
                except InputError as e:
                    summary["skipped"].append(str(e))
                    continue
                stored.add(r.name)
                summary["persons"] = len(stored)
                summary["added"] += r.added
                summary["duplicates"] += r.duplicates
                summary["skipped"] += r.problems
            pending.clear()

        for name, items in people:
            try:
                name = check_name(name)
            except InputError as e:
                summary["skipped"].append(f"{name!r}: {e}")
                continue
            for start in range(0, len(items), MAX_PHOTOS):  # bounded memory for people with many photos
                pending.append((name, items[start:start + MAX_PHOTOS]))
                if sum(len(part) for _, part in pending) >= batch:
                    flush()
        if pending:
            flush()
        return summary

    def enroll_dir(self, root: str | Path) -> dict[str, Any]:
        """Enroll ``root/<person>/<photos>`` (the command line's ``enroll-dir``), one person read at a time."""
        return self.enroll_many((name, [(f"{name}/{f.name}", f.read_bytes()) for f in files])
                                for name, files in person_folders(root))

    # -- the list and edits ----------------------------------------------------------------------
    def people(self) -> list[dict[str, Any]]:
        return [{"name": p.name, "person_id": p.person_id, "photos": p.photos} for p in self.gallery.list()]

    def thumb(self, person_id: int, name: str) -> Path | Image.Image:
        """The person's thumbnail file, or a placeholder image for someone enrolled without the app."""
        path = self.thumbs / f"{int(person_id)}.jpg"
        return path if path.is_file() else placeholder(name)

    def people_gallery(self) -> list[tuple[Path | Image.Image, str]]:
        return [(self.thumb(p["person_id"], p["name"]), f"{p['name']} ({p['photos']} photos)") for p in self.people()]

    def rename(self, old: str | None, new: str | None) -> str:
        if not old:
            raise InputError("Choose the person to rename.")
        new = check_name(new)
        try:
            self.gallery.rename(old, new)
        except KeyError:
            raise InputError(f"There is no person named {old}.") from None
        except ValueError as e:
            text = str(e)
            raise InputError(text[:1].upper() + text[1:] + ".") from None
        return f"Renamed **{escape_markdown(old)}** to **{escape_markdown(new)}**."

    def delete(self, name: str | None) -> str:
        if not name:
            raise InputError("Choose the person to delete.")
        ids = [p["person_id"] for p in self.people() if p["name"] == name]
        if not self.gallery.remove(name):
            raise InputError(f"There is no person named {name}.")
        for pid in ids:
            (self.thumbs / f"{int(pid)}.jpg").unlink(missing_ok=True)
        return f"Deleted **{escape_markdown(name)}** and their photos."

    def _save_thumb(self, person_id: int, crop: Image.Image) -> None:
        path = self.thumbs / f"{int(person_id)}.jpg"
        if not path.exists():
            small = crop.resize((THUMB, THUMB), Image.BILINEAR) if crop.size != (THUMB, THUMB) else crop
            atomic_write(path, lambda tmp: small.save(tmp, format="JPEG", quality=90))

    # -- identify and verify -----------------------------------------------------------------
    def identify(self, path: str | None, k: int = 3
                 ) -> tuple[Image.Image, dict[str, Any], list[tuple[Path | Image.Image, str]]]:
        """Every face in a photo with its best gallery match (or unknown): (boxed image, result, top-k thumbnails)."""
        img = read_upload(path)
        faces, result = self.identify_image(img, k)
        thumbs = []
        for f in result["faces"]:
            prefix = f"face {f['face']}: " if len(faces) > 1 else ""
            thumbs += [(self.thumb(m["person_id"], m["name"]), f"{prefix}{m['name']} {m['score']:.2f}")
                       for m in f["matches"]]
        labels = [f"{f['label']} {f['score']:.2f}" for f in result["faces"]]
        boxed = draw_faces(img, [f.box for f in faces], labels, [not f["unknown"] for f in result["faces"]])
        return boxed, result, thumbs

    def identify_image(self, img: Image.Image, k: int = 3) -> tuple[list, dict[str, Any]]:
        """Detect, embed and search every face of a decoded photo: (the detected faces, the JSON-ready result)."""
        if len(self.gallery) == 0:
            raise InputError("The gallery is empty: enroll someone first (Gallery tab).")
        faces = self.verifier.detector.detect_many([img])[0][:MAX_FACES]
        if not faces:
            raise InputError("No face found in the photo.")
        z = self.verifier.embed_crops([f.crop for f in faces], normalize=False)
        k = int(min(max(int(k), 1), 10))
        out = []
        for i, face in enumerate(faces):
            try:
                r = self.gallery.identify(z[i], k=k, verifier=self.verifier)
            except ValueError as e:  # the gallery was emptied meanwhile
                raise InputError(f"Cannot identify: {e}.") from None
            best = r.matches[0]
            out.append({"face": i + 1, "box": [round(float(v), 1) for v in face.box], "name": r.name,
                        "label": "unknown" if r.unknown else best.name, "score": best.score,
                        "unknown": r.unknown,
                        "matches": [{"name": m.name, "person_id": m.person_id, "score": m.score} for m in r.matches]})
        return faces, {"faces": out, "threshold": self.gallery.threshold, "method": r.method}

    def verify(self, path_a: str | None, path_b: str | None) -> tuple[dict[str, Any], Image.Image]:
        """Same person or not: the verifier's decision, and the two aligned crops side by side."""
        return self.verify_images(read_upload(path_a, "first photo"), read_upload(path_b, "second photo"))

    def verify_images(self, a: Image.Image, b: Image.Image) -> tuple[dict[str, Any], Image.Image]:
        """:meth:`verify` for two decoded photos."""
        if self.verifier.threshold is None:
            raise InputError("This face model has no calibrated threshold, so it cannot decide same or different.")
        try:
            r = self.verifier.verify(a, b)
        except NoFaceError as e:
            raise InputError(f"No face found in the {('first', 'second')[e.index or 0]} photo.") from None
        assert r.crops is not None
        return r.to_dict(), side_by_side(*r.crops)


def upload_items(paths: list[str] | str | None) -> list[tuple[str, bytes]]:
    """Uploaded files -> (file name, bytes), refusing wrong types and oversized files by name."""
    if not paths:
        raise InputError("Add at least one photo.")
    if isinstance(paths, (str, Path)):
        paths = [str(paths)]
    if len(paths) > MAX_PHOTOS:
        raise InputError(f"At most {MAX_PHOTOS} photos at a time.")
    return [(Path(p).name, read_bytes(p)) for p in paths]
