"""The page: four tabs and a model panel over :class:`FaceDemo` and :class:`FewShotDemo`.

Every button is also an API endpoint (``api_name``), callable with ``gradio_client``. Bad input
raises :class:`gr.Error`: the person sees the message in the page, a client gets it as an error,
and the app keeps serving. Gradio shows such messages as HTML and Markdown outputs as Markdown, so
every user-supplied string in them is escaped here or in :mod:`app.face_demo`, as in the top matches'
HTML (:func:`matches_html`); captions, dropdown choices and JSON outputs are shown as text by Gradio
and carry names as they are.
"""
from __future__ import annotations

import atexit
import base64
import functools
import html
import io
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import gradio as gr
import pandas as pd
from PIL import Image

from h_model.faces import ModelMismatchError, NoFaceError
from h_model.preprocess import ImageDecodeError

from .face_demo import FaceDemo, measured, model_name, skipped_markdown, upload_items
from .fewshot_demo import MAX_WAY, FewShotDemo, sketch_to_image
from .uploads import KINDS, InputError, escape_markdown, escape_text, zip_people

TITLE = "H-network face gallery"


MATCHES_CSS = (".h-matches{display:flex;flex-wrap:wrap;gap:8px}"  # Gradio scopes it to the component
               "figure{margin:0;width:112px;text-align:center;font-size:0.85em}"
               "img{width:112px;height:112px;object-fit:cover;border-radius:4px}")


def data_url(img: Path | Image.Image) -> str:
    """A JPEG file (sent as it is) or an image (encoded as JPEG) -> a ``data:`` URL."""
    if isinstance(img, Image.Image):
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="JPEG", quality=90)
        raw = buf.getvalue()
    else:
        raw = Path(img).read_bytes()
    return "data:image/jpeg;base64," + base64.b64encode(raw).decode("ascii")


def html_text(text: str) -> str:
    """Text -> HTML that shows exactly it; template characters (``$ { }``) become entities too, so no
    templating of the fragment can act on a user's string."""
    return html.escape(text).replace("$", "&#36;").replace("{", "&#123;").replace("}", "&#125;")


def matches_html(items: list[tuple[Path | Image.Image, str]]) -> str:
    """Top matches as one HTML fragment with the thumbnails inline and the captions escaped.

    Inline images put the whole answer in the reply: a ``gradio_client`` caller downloads no file
    per match (each download is one more HTTPS connection), and the page shows the same thumbnails.
    """
    figures = "".join(f'<figure><img src="{data_url(img)}" alt="{html_text(cap)}">'
                      f"<figcaption>{html_text(cap)}</figcaption></figure>" for img, cap in items)
    return f'<div class="h-matches">{figures}</div>'


class PhotoInput(gr.Image):
    """``gr.Image`` (same widget) whose undecodable uploads become a message instead of a stack trace."""

    is_template = True  # the frontend draws it as an ordinary Image

    def preprocess(self, payload: Any) -> Any:
        try:
            return super().preprocess(payload)
        except gr.Error:
            raise
        except Exception:
            raise gr.Error(f"The upload is not an image (or a damaged one): use a {KINDS} photo.",
                           print_exception=False) from None


class ImageFiles:
    """Output images written to unique files in a private temporary folder, returned as paths.

    Gradio stores an in-memory output image under a path named by its content hash, rewriting the
    file in place; two requests with identical answers at once (the same photo identified twice)
    could then serve a half-written file. Paths are copied into its cache atomically instead.
    Files older than ``keep_s`` are removed as new ones are written.
    """

    def __init__(self, keep_s: float = 600.0) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="h_model_app_"))
        self.keep_s = keep_s
        self._pruned = time.monotonic()
        atexit.register(shutil.rmtree, self.folder, True)

    def __call__(self, img: Any, fmt: str = "png") -> Any:
        """A path for a PIL image (``fmt``: png or jpeg); anything else (a path, None) unchanged."""
        if not isinstance(img, Image.Image):
            return img
        self._prune()
        fd, path = tempfile.mkstemp(dir=self.folder, suffix=f".{fmt}")
        with os.fdopen(fd, "wb") as f:
            img.save(f, format=fmt.upper(), **({"quality": 90} if fmt == "jpeg" else {}))
        return path

    def gallery(self, items: list[tuple[Any, str]]) -> list[tuple[Any, str]]:
        return [(self(img), caption) for img, caption in items]

    def _prune(self) -> None:
        if time.monotonic() - self._pruned < 60:
            return
        self._pruned = time.monotonic()
        old = time.time() - self.keep_s
        for p in self.folder.iterdir():
            try:
                if p.stat().st_mtime < old:
                    p.unlink()
            except OSError:
                pass


def shown(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a bad-input exception into a message shown in the page (and sent to API clients), escaped:
    Gradio renders it as HTML."""
    @functools.wraps(fn)
    def wrapper(*args: Any) -> Any:
        try:
            return fn(*args)
        except (InputError, NoFaceError, ImageDecodeError, ModelMismatchError) as e:
            raise gr.Error(escape_text(str(e)), print_exception=False) from None
    return wrapper


def model_markdown(faces: FaceDemo, fewshot: FewShotDemo) -> str:
    info = faces.model_info()
    t = "not calibrated" if info["threshold"] is None else f"{info['threshold']:.3f}"
    far = "" if info["far"] is None else f" (false-accept rate {info['far']:g})"
    lines = [f"**Face model:** `{info['model']}` ({info['variant']} / {info['backbone']}), "
             f"id `{info['model_id']}`",
             f"**Threshold:** {t}{far}"]
    acc = info["measured"]
    lines.append("**Measured:** " + (", ".join(f"{k} {v:.4f}" for k, v in acc.items()) if acc else "no figures stored"))
    fs = measured(fewshot.model_path)
    lines.append(f"**Few-shot model:** `{model_name(fewshot.model_path)}`" +
                 (" — " + ", ".join(f"{k} {v:.4f}" for k, v in fs.items()) if fs else ""))
    lines.append(f"**Gallery:** `{info['gallery']['name']}`, {info['gallery']['people']} people")
    return "  \n".join(lines)


def build_ui(faces: FaceDemo, fewshot: FewShotDemo) -> gr.Blocks:
    """The Blocks app (not launched); serve it with ``allowed_paths=[str(faces.thumbs)]``."""
    files = ImageFiles()

    def people_outputs() -> tuple[Any, Any, list[dict[str, Any]]]:
        people = faces.people()
        names = [p["name"] for p in people]
        return files.gallery(faces.people_gallery()), gr.Dropdown(choices=names, value=None), people

    @shown
    def preview(paths: list[str] | None) -> tuple[Any, str]:
        crops, problems = faces.preview(paths)
        text = f"{len(crops)} face(s) found; **Enroll** saves them." if crops else "No photo to enroll."
        return files.gallery(crops), text + skipped_markdown(problems)

    @shown
    def enroll(name: str, paths: list[str] | None) -> tuple[Any, str, dict[str, Any]]:
        r = faces.enroll(name, upload_items(paths))
        result = {"name": r.name, "person_id": r.person_id, "added": r.added, "duplicates": r.duplicates,
                  "skipped": r.problems}
        return files.gallery(r.crops), r.message(), result

    @shown
    def enroll_zip(path: str | None) -> tuple[str, dict[str, Any]]:
        s = faces.enroll_many(zip_people(path).items())
        text = f"Enrolled {s['persons']} people, {s['added']} new photo(s)."
        return text + skipped_markdown(s["skipped"][:20]), s

    @shown
    def rename(old: str | None, new: str) -> str:
        return faces.rename(old, new)

    @shown
    def delete(name: str | None) -> str:
        return faces.delete(name)

    @shown
    def identify(path: str | None, k: float) -> tuple[Any, str, Any, dict[str, Any]]:
        boxed, result, thumbs = faces.identify(path, int(k))
        rows = []
        for f in result["faces"]:
            who = "**unknown**" if f["unknown"] else f"**{escape_markdown(f['name'])}**"
            t = "none" if result["threshold"] is None else f"{result['threshold']:.3f}"
            rows.append(f"Face {f['face']}: {who}, score {f['score']:.3f} (threshold {t})")
        return files(boxed, "jpeg"), "  \n".join(rows), matches_html(thumbs), result

    @shown
    def verify(a: str | None, b: str | None) -> tuple[str, Any, dict[str, Any]]:
        r, pair = faces.verify(a, b)
        head = "Same person" if r["same"] else "Different people"
        return f"### {head}\nscore {r['score']:.3f}, threshold {r['threshold']:.3f}", files(pair), r

    @shown
    def fs_sample(way: float, seed: float | None) -> tuple[Any, Any, str]:
        support, query, truth = fewshot.sample(int(way), None if seed is None else int(seed))
        text = f"The query is a drawing of character **{escape_markdown(truth)}** (by another person)."
        return files.gallery(support), files(query), text

    @shown
    def fs_predict(support: Any, query: str | None, sketch: Any) -> tuple[pd.DataFrame, dict[str, Any]]:
        drawn = sketch_to_image(sketch)
        r = fewshot.predict(support, drawn if drawn is not None else query)
        r["query"] = "sketch" if drawn is not None else "image"
        return pd.DataFrame({"class": r["classes"], "probability": r["probs"]}), r

    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(1800, 3600)) as demo:
        gr.Markdown(f"# {TITLE}\nThe gallery is the support set, a new photo the query: the H-network answers "
                    "who it is, or *unknown*.")
        with gr.Accordion("Model", open=False, elem_id="model-panel"):
            gr.Markdown(model_markdown(faces, fewshot), elem_id="model-info")
            info_json = gr.JSON(label="Model and gallery", elem_id="model-json")

        with gr.Tab("Gallery", id="gallery"):
            with gr.Row():
                with gr.Column():
                    name = gr.Textbox(label="Name", max_length=64, elem_id="enroll-name")
                    photos = gr.File(label="Photos of this person", file_count="multiple", file_types=["image"],
                                     elem_id="enroll-photos")
                    with gr.Row():
                        detect_btn = gr.Button("Detect faces", elem_id="detect-btn")
                        enroll_btn = gr.Button("Enroll", variant="primary", elem_id="enroll-btn")
                    crops = gr.Gallery(fit_columns=False, label="Aligned faces (what is saved)", columns=5, height=200,
                                       format="png", elem_id="enroll-crops")
                    enroll_status = gr.Markdown(elem_id="enroll-status")
                    with gr.Accordion("Bulk enrollment: a .zip of <person>/<photos> folders", open=False):
                        zip_file = gr.File(label=".zip archive", file_types=[".zip"], elem_id="bulk-zip")
                        bulk_btn = gr.Button("Enroll everyone in the archive", elem_id="bulk-btn")
                        bulk_status = gr.Markdown(elem_id="bulk-status")
                    enroll_json = gr.JSON(label="Last enrollment", visible=False)
                with gr.Column():
                    people = gr.Gallery(fit_columns=False, label="People", columns=4, height=360, allow_preview=False,
                                        elem_id="people")
                    who = gr.Dropdown(label="Person", choices=[], allow_custom_value=True, elem_id="person")
                    new_name = gr.Textbox(label="New name", max_length=64, elem_id="new-name")
                    with gr.Row():
                        rename_btn = gr.Button("Rename", elem_id="rename-btn")
                        delete_btn = gr.Button("Delete", variant="stop", elem_id="delete-btn")
                    edit_status = gr.Markdown(elem_id="edit-status")
                    people_json = gr.JSON(label="People", visible=False)

        with gr.Tab("Identify", id="identify"):
            with gr.Row():
                with gr.Column():
                    id_photo = PhotoInput(label="Photo", sources=["upload", "webcam"], type="filepath",
                                          image_mode=None, elem_id="identify-photo")
                    k = gr.Slider(1, 10, value=3, step=1, label="Top-k matches")
                    id_btn = gr.Button("Identify", variant="primary", elem_id="identify-btn")
                with gr.Column():
                    boxed = gr.Image(label="Faces", type="pil", format="jpeg", elem_id="identify-boxed")
                    id_summary = gr.Markdown(elem_id="identify-summary")
            gr.Markdown("Top matches")
            matches = gr.HTML(elem_id="identify-matches", css_template=MATCHES_CSS, js_on_load=None)
            id_json = gr.JSON(label="Result", elem_id="identify-json")

        with gr.Tab("Verify", id="verify"):
            with gr.Row():
                va = PhotoInput(label="First photo", type="filepath", image_mode=None, elem_id="verify-a")
                vb = PhotoInput(label="Second photo", type="filepath", image_mode=None, elem_id="verify-b")
            v_btn = gr.Button("Verify", variant="primary", elem_id="verify-btn")
            with gr.Row():
                verdict = gr.Markdown(elem_id="verify-verdict")
                pair = gr.Image(label="Aligned faces", type="pil", format="png", elem_id="verify-crops")
            v_json = gr.JSON(label="Result", elem_id="verify-json")

        with gr.Tab("Few-shot", id="fewshot"):
            gr.Markdown("The same learner beyond faces: Omniglot characters it never saw in training, "
                        "one drawing each. Pick characters (or upload your own), then classify a query.")
            with gr.Row():
                way = gr.Slider(2, MAX_WAY, value=5, step=1, label="Characters (N)")
                seed = gr.Number(value=-1, precision=0, label="Seed (-1: random)")
                pick_btn = gr.Button("Pick N characters", elem_id="fs-pick")
            support = gr.Gallery(fit_columns=False,
                                 label="Support set (one drawing per class; the caption is the class)",
                                 type="filepath", interactive=True, columns=10, height=160, format="png",
                                 elem_id="fs-support")
            with gr.Row():
                fs_query = PhotoInput(label="Query", type="filepath", image_mode=None, sources=["upload"],
                                      format="png", height=220, elem_id="fs-query")
                sketch = gr.Sketchpad(label="...or draw the query (used when not empty)", type="numpy",
                                      canvas_size=(280, 280), brush=gr.Brush(default_size=10, colors=["#000000"],
                                                                               color_mode="fixed"),
                                      elem_id="fs-sketch")
            truth = gr.Markdown(elem_id="fs-truth")
            fs_btn = gr.Button("Classify", variant="primary", elem_id="fs-classify")
            chart = gr.BarPlot(x="class", y="probability", y_lim=[0, 1], label="Probability of each class",
                               elem_id="fs-chart")
            fs_json = gr.JSON(label="Prediction", elem_id="fs-json")

        refresh = dict(fn=people_outputs, outputs=[people, who, people_json], api_visibility="private")
        demo.load(faces.model_info, outputs=info_json, api_name="model_info")
        demo.load(**refresh)
        detect_btn.click(preview, [photos], [crops, enroll_status], api_name="preview")
        saved = enroll_btn.click(enroll, [name, photos], [crops, enroll_status, enroll_json], api_name="enroll")
        saved.success(**refresh)
        saved.success(lambda: ("", None), None, [name, photos], api_visibility="private")  # ready for the next person
        bulk_btn.click(enroll_zip, [zip_file], [bulk_status, enroll_json], api_name="enroll_zip").success(**refresh)
        rename_btn.click(rename, [who, new_name], [edit_status], api_name="rename").success(**refresh)
        delete_btn.click(delete, [who], [edit_status], api_name="delete").success(**refresh)
        gr.Button(visible=False).click(people_outputs, None, [people, who, people_json], api_name="list_people")
        id_btn.click(identify, [id_photo, k], [boxed, id_summary, matches, id_json], api_name="identify")
        v_btn.click(verify, [va, vb], [verdict, pair, v_json], api_name="verify")
        pick_btn.click(fs_sample, [way, seed], [support, fs_query, truth], api_name="fewshot_sample")
        fs_btn.click(fs_predict, [support, fs_query, sketch], [chart, fs_json], api_name="fewshot_predict")
    return demo
