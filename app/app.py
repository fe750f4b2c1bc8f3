"""The face-gallery web demo of the H-network.

    python app/app.py [--host 127.0.0.1] [--port 7860] [--gallery DIR] [--model PATH] [--backbone NAME]
                      [--fewshot-model PATH] [--omniglot-root DIR] [--device auto] [--concurrency 2]
    python app/app.py enroll-dir PEOPLE_DIR [--gallery DIR] [--model PATH]   (PEOPLE_DIR/<person>/<photos>)

Serves http://HOST:PORT/ (Gradio, analytics off) and a JSON API under /api/v1 (see app/api.py).
``H_APP_AUTH=user:password`` turns on a login (HTTP Basic for the API); failed logins are limited
per client (``--login-attempts`` a minute). Requests may name only files uploaded to the app
(app/guard.py). SIGTERM and SIGINT stop the server, then save the gallery's index and close it.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __name__ == "__main__":  # run as a script: import the repository's packages, not this folder's files
    sys.path[0] = str(REPO)
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

DEFAULT_GALLERY = Path.home() / ".local" / "share" / "h_model" / "gallery"


def parse_auth(value: str | None) -> tuple[str, str] | None:
    """``user:password`` (the password may contain colons) -> (user, password); unset/empty -> None."""
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise SystemExit("H_APP_AUTH must look like user:password")
    return user, password


def model_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--gallery", default=str(DEFAULT_GALLERY), help="gallery directory (created if missing)")
    ap.add_argument("--model", help="face checkpoint: a run directory, or a folder of them (default: bundled)")
    ap.add_argument("--backbone", help="pick the face model with this backbone among several under --model")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--min-face", type=int, default=20,
                    help="smallest face to detect, in pixels (40 detects ~1.7x faster on 640x480 photos)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads per process (1 suits a small or shared CPU; 0: torch's default)")
    ap.add_argument("--allow-shared-photos", action="store_true",
                    help="let one photo be enrolled under several names (refused by default)")


def load_faces(a: argparse.Namespace):
    import torch

    from app.face_demo import FaceDemo, resolve_face_model
    from h_model.faces import FaceVerifier

    if a.threads > 0:
        torch.set_num_threads(a.threads)
    path = resolve_face_model(a.model, a.backbone)
    return FaceDemo(FaceVerifier.load(path, device=a.device, min_face_size=a.min_face), a.gallery, path,
                    allow_shared_photos=a.allow_shared_photos)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from h_model.faces import ModelMismatchError, NoModelError

    if argv[:1] == ["enroll-dir"]:
        ap = argparse.ArgumentParser(prog="python app/app.py enroll-dir",
                                     description="Enroll PEOPLE_DIR/<person>/<photos> into the app's gallery.")
        ap.add_argument("people_dir")
        model_args(ap)
        a = ap.parse_args(argv[1:])
        try:
            faces = load_faces(a)
        except (NoModelError, ModelMismatchError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        try:
            print(json.dumps(faces.enroll_dir(a.people_dir), indent=2))
        finally:
            faces.close()
        return 0

    ap = argparse.ArgumentParser(prog="python app/app.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    ap.add_argument("--port", type=int, default=7860)
    model_args(ap)
    ap.add_argument("--fewshot-model", help="Omniglot checkpoint for the Few-shot tab (default: bundled)")
    ap.add_argument("--omniglot-root", help="Omniglot images_evaluation folder to sample characters from")
    ap.add_argument("--concurrency", type=int, default=2, help="requests worked on at once (the rest queue)")
    ap.add_argument("--login-attempts", type=int, default=5,
                    help="failed logins a client may make in a minute before it is refused (429)")
    a = ap.parse_args(argv)
    auth = parse_auth(os.environ.get("H_APP_AUTH"))

    import gradio as gr
    import uvicorn
    from fastapi import FastAPI
    from gradio.utils import get_upload_folder

    import h_model
    from app.api import PREFIX, add_api
    from app.fewshot_demo import FewShotDemo, default_omniglot_root
    from app.guard import LoginGuard, LoginLimiter, UploadGuard
    from app.ui import build_ui
    from app.uploads import MAX_ZIP_MB

    try:
        faces = load_faces(a)
    except (NoModelError, ModelMismatchError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    fs_path = Path(a.fewshot_model) if a.fewshot_model else h_model.bundled_path("omniglot")
    fewshot = FewShotDemo(h_model.load(fs_path, a.device), fs_path, a.omniglot_root or default_omniglot_root())
    demo = build_ui(faces, fewshot)
    demo.queue(default_concurrency_limit=max(1, a.concurrency), max_size=64)
    # Served by uvicorn directly (not demo.launch): no launch-time self-check that gives up when a busy
    # machine answers its first request slowly.
    limiter = LoginLimiter(a.login_attempts, window_s=60.0)
    server = FastAPI()
    add_api(server, faces, auth, a.concurrency, limiter)  # /api/v1/...: plain JSON routes, before the page
    server = gr.mount_gradio_app(server, demo, path="/", server_name=a.host, server_port=a.port, auth=auth,
                                 allowed_paths=[str(faces.thumbs)], max_file_size=f"{MAX_ZIP_MB}mb",
                                 show_error=False, ssr_mode=False, mcp_server=False, enable_monitoring=False)
    demo.has_launched = True  # served: Gradio's own checks on file inputs apply (launch() would set it)
    server.add_middleware(UploadGuard, folder=get_upload_folder(), limit_mb=MAX_ZIP_MB, skip=(PREFIX,))
    server.add_middleware(LoginGuard, limiter=limiter)
    g = faces.gallery
    print(f"Gallery {g.path.name}: {len(g)} people, search index {g.index_kind}", flush=True)
    print(f"Serving the face gallery demo on http://{a.host}:{a.port}/", flush=True)
    # uvicorn stops on SIGTERM/SIGINT, then raises the signal again: SIGINT's default handler raises
    # KeyboardInterrupt, SIGTERM's would kill the process; this one exits, so `finally` closes the gallery.
    try:
        signal.signal(signal.SIGTERM, stop)
        uvicorn.Server(uvicorn.Config(server, host=a.host, port=a.port, log_level="warning")).run()
    except KeyboardInterrupt:
        pass
    finally:
        faces.close()
        print("Gallery closed.", flush=True)
    return 0


def stop(signum: int, frame: object) -> None:
    """SIGTERM outside uvicorn's own handling (before it serves, or re-raised after): exit through `finally`."""
    raise SystemExit(0)


if __name__ == "__main__":
    sys.exit(main())
