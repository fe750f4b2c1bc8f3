"""Helpers for the app tests (importable as ``tests.app.app_helpers``): run ``app/app.py`` as a server."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def photos(person: Path, n: int) -> list[Path]:
    """The first ``n`` photos of an identity folder."""
    return sorted(person.iterdir())[:n]


def one_face_photos(client, person: Path, n: int) -> list[Path]:
    """``n`` photos of an identity folder that the app would enroll (exactly one face each), as its
    ``/preview`` through a ``gradio_client.Client`` says."""
    from gradio_client import handle_file

    candidates = photos(person, n + 4)
    crops, _ = client.predict([handle_file(str(p)) for p in candidates], api_name="/preview")
    accepted = {c["caption"] for c in crops}
    chosen = [p for p in candidates if p.name in accepted][:n]
    assert len(chosen) == n, f"{person}: fewer than {n} one-face photos among {len(candidates)}"
    return chosen


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class AppServer:
    """``python app/app.py`` on a free loopback port, in its own process; ``start()`` waits for the page.
    ``auth``: an ``H_APP_AUTH`` value (``user:password``) to turn the login on; off otherwise."""

    def __init__(self, gallery: Path, model: Path, workdir: Path, auth: str | None = None) -> None:
        self.gallery = gallery
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = workdir / f"app-{self.port}.log"
        self.cmd = [sys.executable, str(REPO / "app" / "app.py"), "--host", "127.0.0.1", "--port", str(self.port),
                    "--gallery", str(gallery), "--model", str(model)]
        self.env = {k: v for k, v in os.environ.items() if k != "H_APP_AUTH"}
        self.env.update(GRADIO_TEMP_DIR=str(workdir / "gradio"), PYTHONUNBUFFERED="1")
        if auth:
            self.env["H_APP_AUTH"] = auth
        self.proc: subprocess.Popen | None = None
        self.start_s = float("nan")

    def start(self, timeout: float = 240.0) -> "AppServer":
        t0 = time.perf_counter()
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=REPO)
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the app exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url, timeout=5) as r:
                    if r.status == 200:
                        self.start_s = time.perf_counter() - t0
                        return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"the app did not serve {self.url} within {timeout:.0f} s:\n{self.log.read_text()[-3000:]}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)  # Gradio closes; the app flushes its gallery index
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
