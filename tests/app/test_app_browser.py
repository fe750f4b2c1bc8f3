"""A person's path through the page in headless Chromium: log in, enroll -> identify -> verify, screenshots.

The server asks for a login (``H_APP_AUTH``). Chromium is Debian's ``chromium`` (``.ci/run`` installs it
where missing), driven by Playwright for Python through ``executable_path``; screenshots go to
``$H_APP_SCREENSHOTS`` or a pytest temp folder.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import httpx
import pytest

from tests.app.app_helpers import AppServer, photos

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-dev-shm-usage"]
USER, PASSWORD = "ada", "pass:word"  # H_APP_AUTH=ada:pass:word
HTML_NAME = "<img src=x onerror=alert(1)> *Eve*"
TIMEOUT_MS = 180_000  # each wait; generous for a busy 2-core machine


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)  # type: ignore[return-value]
    if os.environ.get("CI"):
        pytest.fail("CI must have Debian's chromium (.ci/run installs it)")
    pytest.skip("chromium is not installed (apt-get install chromium)")


@pytest.fixture(scope="module")
def page_url(tmp_path_factory, face_model: Path, celeba: list[Path]):
    work = tmp_path_factory.mktemp("app_browser")
    app = AppServer(work / "gallery", face_model, work, auth=f"{USER}:{PASSWORD}").start()  # a fresh gallery
    yield app.url
    app.stop()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    out = Path(os.environ.get("H_APP_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    out.mkdir(parents=True, exist_ok=True)
    return out


def wait_text(page, selector: str, text: str) -> str:
    """Wait until the element shows ``text``; return all it shows."""
    page.locator(selector).filter(has_text=text).first.wait_for(timeout=TIMEOUT_MS)
    return page.inner_text(selector)


def cleared(page) -> None:
    """Wait until the page has emptied the name and photos after an enrollment (sending the next person's
    photos before that could send the last person's again)."""
    page.wait_for_function("document.querySelector('#enroll-name textarea').value === '' && "
                           "!document.querySelector('#enroll-photos').innerText.includes('.jpg')")


def test_enroll_identify_verify_in_browser(page_url: str, shots: Path, celeba: list[Path]) -> None:
    from playwright.sync_api import sync_playwright

    ada, bob, eve = photos(celeba[-1], 2), photos(celeba[-2], 2), photos(celeba[-3], 1)[0]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(TIMEOUT_MS)
            assert httpx.get(f"{page_url}config", timeout=60).status_code == 401  # nothing without a login
            page.goto(page_url)
            page.get_by_label("username").fill(USER)
            page.get_by_label("password").fill(PASSWORD)
            page.get_by_role("button", name="Login").click()
            page.locator("#enroll-name textarea").wait_for()
            page.wait_for_function("document.title === 'H-network face gallery'")

            # Gallery: enroll two people, seeing the aligned crops before saving
            for name, ps in (("Ada", ada), ("Bob", bob)):
                page.fill("#enroll-name textarea", name)
                page.set_input_files("#enroll-photos input[type=file]", [str(p) for p in ps])
                page.locator("#enroll-photos").filter(has_text=ps[-1].stem).wait_for()
                page.click("#detect-btn")
                wait_text(page, "#enroll-status", "2 face(s) found")
                assert page.locator("#enroll-crops img").count() == 2
                page.screenshot(path=str(shots / f"1-{name}-crops.png"), full_page=True)
                page.click("#enroll-btn")
                wait_text(page, "#enroll-status", f"Enrolled {name}: 2 new photo(s)")
                cleared(page)
            people = wait_text(page, "#people", "Bob (2 photos)")
            assert "Ada (2 photos)" in people and page.locator("#people img").count() == 2
            page.screenshot(path=str(shots / "2-gallery.png"), full_page=True)

            # A name that is HTML is shown as the text it is, never as an element
            page.fill("#enroll-name textarea", HTML_NAME)
            page.set_input_files("#enroll-photos input[type=file]", [str(eve)])
            page.locator("#enroll-photos").filter(has_text=eve.stem).wait_for()
            page.click("#enroll-btn")
            assert f"Enrolled {HTML_NAME}: 1 new photo(s)" in wait_text(page, "#enroll-status", "Enrolled <img")
            cleared(page)
            assert f"{HTML_NAME} (1 photos)" in wait_text(page, "#people", "(1 photos)")
            assert page.locator("img[src=x], #enroll-status img, #enroll-status a").count() == 0
            page.fill("#person input", HTML_NAME)
            page.keyboard.press("Enter")
            page.click("#delete-btn")
            wait_text(page, "#edit-status", "Deleted")
            assert page.locator("img[src=x], #edit-status img").count() == 0

            # Identify: the same photo as enrolled is recognised, with a box, a label and thumbnails
            page.get_by_role("tab", name="Identify").click()
            page.set_input_files("#identify-photo input[type=file]", str(bob[1]))
            page.locator("#identify-photo img").first.wait_for()
            page.click("#identify-btn")
            summary = wait_text(page, "#identify-summary", "Face 1")
            assert "Face 1: Bob, score 1.000" in summary, summary  # an enrolled photo: exactly 1.0
            page.locator("#identify-boxed img").first.wait_for()
            assert "Bob" in wait_text(page, "#identify-matches", "Bob")
            page.screenshot(path=str(shots / "3-identify.png"), full_page=True)

            # Bad input: a message in the page, and the app keeps serving
            page.set_input_files("#identify-photo input[type=file]", _not_a_photo(shots))
            page.click("#identify-btn")
            page.locator("[data-testid=toast-text]").filter(has_text="not an image").first.wait_for()
            page.screenshot(path=str(shots / "4-bad-upload.png"))  # the message is a toast, top right

            # Verify: the same photo twice is the same person; two people get a consistent verdict
            page.get_by_role("tab", name="Verify").click()
            page.set_input_files("#verify-a input[type=file]", str(ada[0]))
            page.set_input_files("#verify-b input[type=file]", str(ada[0]))
            page.locator("#verify-b img").first.wait_for()
            page.click("#verify-btn")
            first = wait_text(page, "#verify-verdict", "score")
            assert "Same person" in first and re.search(r"score (0\.99\d|1\.000)", first), first
            page.set_input_files("#verify-b input[type=file]", str(bob[0]))
            page.locator("#verify-b img").first.wait_for()
            page.click("#verify-btn")
            page.wait_for_function("old => document.querySelector('#verify-verdict').innerText != old", arg=first)
            verdict = page.inner_text("#verify-verdict")
            found = re.search(r"score (-?[\d.]+), threshold (-?[\d.]+)", verdict)
            score, threshold = float(found.group(1)), float(found.group(2))
            assert ("Same person" in verdict) == (score >= threshold), verdict
            page.locator("#verify-crops img").first.wait_for()
            page.screenshot(path=str(shots / "5-verify.png"), full_page=True)
        finally:
            browser.close()
    print(f"\nscreenshots: {shots}")


def _not_a_photo(folder: Path) -> str:
    path = folder / "not-a-photo.jpg"
    path.write_bytes(b"this is text, not a JPEG")
    return str(path)


def test_json_api_needs_the_same_login(page_url: str) -> None:
    import httpx

    assert httpx.get(f"{page_url}api/v1/health", timeout=60).status_code == 200
    assert httpx.get(f"{page_url}api/v1/people", timeout=60).status_code == 401
    assert httpx.get(f"{page_url}api/v1/people", auth=(USER, "wrong"), timeout=60).status_code == 401
    assert httpx.get(f"{page_url}api/v1/people", auth=(USER, PASSWORD), timeout=60).status_code == 200
