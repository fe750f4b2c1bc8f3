"""What a person may send the demo: checked here, turned into a readable message when wrong.

Nothing uploaded is unpickled or used as a path: images are decoded with PIL from bytes, zip
archives are read member by member in memory, names only ever go into the gallery database.
A file is only ever read after :func:`check_upload` found it to be a regular file of bounded
size (inside the upload folder, where the web layer asks for that).
"""
from __future__ import annotations

import html
import io
import os
import re
import stat
import unicodedata
import zipfile
from pathlib import Path, PurePosixPath

from PIL import Image

from h_model.data.folder import IMAGE_EXTS
from h_model.faces.detect import load_rgb
from h_model.preprocess import ImageDecodeError

MAX_UPLOAD_MB = 10
MAX_PIXELS = 40_000_000
MAX_NAME_CHARS = 64
MAX_ZIP_MB = 50
MAX_ZIP_FILES = 5000
FORMATS = {"JPEG", "MPO", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM"}
KINDS = "JPEG, PNG, WebP, BMP, GIF, TIFF or PGM"


class InputError(ValueError):
    """Bad input; the message is meant for the person using the app."""


def escape_text(text: str) -> str:
    """Plain text -> HTML-safe text (``<``, ``>``, ``&`` escaped): messages shown as HTML or sent as errors."""
    return html.escape(str(text), quote=False)


def escape_markdown(text: str) -> str:
    """A user-supplied string -> Markdown that renders as exactly that text (no HTML, links or emphasis)."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|~])", r"\\\1", escape_text(text))


def check_upload(path: str | Path, folder: str | Path | None = None, limit_mb: float = MAX_UPLOAD_MB,
                 label: str = "file") -> Path:
    """``path`` resolved (symlinks followed), checked without reading it: inside ``folder`` when given,
    a regular file (not a directory, device, FIFO or socket) of at most ``limit_mb``. Anything else
    is an :class:`InputError`; a path outside ``folder`` is refused before it is even looked at."""
    real = Path(os.path.realpath(path))
    if folder is not None and not real.is_relative_to(os.path.realpath(folder)):
        raise InputError(f"{label}: refused: not a file uploaded to this app (upload the file itself).")
    try:
        st = os.stat(real)
    except OSError:
        raise InputError(f"{label}: the upload could not be found; upload it again.") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{label}: is a folder, not a file; upload the file itself.")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{label}: not a regular file; upload the file itself.")
    if st.st_size > limit_mb * 1024 * 1024:
        raise InputError(f"{label}: file too large ({st.st_size / 2**20:.1f} MB; the limit is {limit_mb:g} MB).")
    return real


def check_name(name: str | None) -> str:
    """A person's display name: trimmed, 1 to 64 printable characters."""
    name = " ".join(str(name or "").split())
    if not name:
        raise InputError("Give the person a name.")
    if len(name) > MAX_NAME_CHARS:
        raise InputError(f"A name can have at most {MAX_NAME_CHARS} characters.")
    if any(unicodedata.category(c).startswith("C") for c in name):
        raise InputError("A name cannot contain control characters.")
    return name


def decode_image(data: bytes, label: str) -> Image.Image:
    """Bytes of one photo -> RGB PIL image, or :class:`InputError` saying why not."""
    if len(data) > MAX_UPLOAD_MB * 1024 * 1024:
        raise InputError(f"{label}: file too large ({len(data) / 2**20:.1f} MB; the limit is {MAX_UPLOAD_MB} MB).")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            fmt, (w, h) = probe.format, probe.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise InputError(f"{label}: not an image (or a damaged one); upload a {KINDS} photo.") from None
    if fmt not in FORMATS:
        raise InputError(f"{label}: unsupported image type {fmt}; upload a {KINDS} photo.")
    if w * h > MAX_PIXELS:
        raise InputError(f"{label}: image too large ({w}x{h} pixels; the limit is {MAX_PIXELS // 10**6} megapixels).")
    try:
        return load_rgb(data)
    except ImageDecodeError:
        raise InputError(f"{label}: not an image (or a damaged one); upload a {KINDS} photo.") from None


def read_bytes(path: str | Path | None, label: str = "photo") -> bytes:
    """An uploaded file (a server-side temporary path from Gradio): its type by suffix and its size checked."""
    if path is None or str(path) == "":
        raise InputError(f"Upload a {label} first.")
    p = Path(path)
    label = f"{label} {p.name}" if p.name else label
    if p.suffix and p.suffix.lower() not in IMAGE_EXTS:
        raise InputError(f"{label}: unsupported file type {p.suffix}; upload a {KINDS} photo.")
    real = check_upload(p, label=label)
    try:
        return real.read_bytes()
    except OSError:
        raise InputError(f"{label}: the upload could not be read; try again.") from None


def read_upload(path: str | Path | None, label: str = "photo") -> Image.Image:
    """An uploaded photo -> RGB image, or :class:`InputError` saying why not."""
    data = read_bytes(path, label)
    return decode_image(data, f"{label} {Path(str(path)).name}")


def zip_people(path: str | Path | None) -> dict[str, list[tuple[str, bytes]]]:
    """A zip of ``<person>/<photos>`` -> {person: [(file name, bytes)]}, read in memory (never extracted).

    Only members exactly two levels deep with an image suffix count; hidden files and folders
    (``__MACOSX``, ``.DS_Store``) are ignored. The archive's size, member count and total
    uncompressed size are bounded, so a zip bomb is refused before it is read.
    """
    if path is None or str(path) == "":
        raise InputError("Upload a .zip of <person>/<photos> folders first.")
    p = Path(path)
    if p.suffix.lower() != ".zip":
        raise InputError(f"{p.name}: unsupported file type {p.suffix or '(none)'}; upload a .zip archive.")
    real = check_upload(p, limit_mb=MAX_ZIP_MB, label=p.name)
    try:
        zf = zipfile.ZipFile(real)
    except (zipfile.BadZipFile, OSError):
        raise InputError(f"{p.name}: not a zip archive (or a damaged one).") from None
    people: dict[str, list[tuple[str, bytes]]] = {}
    with zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        if len(members) > MAX_ZIP_FILES:
            raise InputError(f"{p.name}: too many files ({len(members)}; the limit is {MAX_ZIP_FILES}).")
        if sum(m.file_size for m in members) > MAX_ZIP_MB * 1024 * 1024:
            raise InputError(f"{p.name}: too much data once unpacked (the limit is {MAX_ZIP_MB} MB).")
        for m in members:
            parts = PurePosixPath(m.filename.replace("\\", "/")).parts
            if not parts or parts[0] == "/" or any(x.startswith((".", "__")) for x in parts):
                continue  # absolute, "..", hidden or __MACOSX members are never used
            parts = parts[1:] if len(parts) == 3 else parts  # tolerate one top folder: root/<person>/<photo>
            if len(parts) != 2:
                continue
            if PurePosixPath(parts[1]).suffix.lower() not in IMAGE_EXTS:
                continue
            if m.file_size > MAX_UPLOAD_MB * 1024 * 1024:
                continue
            people.setdefault(parts[0], []).append((parts[1], zf.read(m)))
    if not people:
        raise InputError(f"{p.name}: no <person>/<photo> images found inside.")
    return dict(sorted(people.items()))
