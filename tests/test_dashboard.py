"""The dashboard in a real browser: Playwright driving Debian's chromium against a real ``restorecli serve``
process with a tiny random 2x model. Files are dropped onto the page (a real drop event carrying a DataTransfer)
or chosen through the keyboard-opened file picker; the test then reads what the page shows and downloads."""

from __future__ import annotations

import base64
import re
import io
import shutil
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import TEST_INPUTS
from live_server import LiveServer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TIMEOUT_MS = 60_000  # generous: two shared CPU cores also run the server, its worker and the browser
PHOTOS = ("rocket.jpg", "astronaut_face.jpg")
BROKEN = ("broken.png", b"not an image")

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)  # this module's assertions only: reset below
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield launched
        launched.close()
    expect.set_options(timeout=5_000)  # Playwright's own default


def open_dashboard(browser, server: LiveServer):
    """A fresh page (its own storage) on the server's dashboard, recording every URL it requests and the
    X-API-Key header each request carried."""
    context = browser.new_context(accept_downloads=True, viewport={"width": 1100, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    requests: list[tuple[str, str | None]] = []
    errors: list[str] = []
    page.on("request", lambda request: requests.append((request.url, request.headers.get("x-api-key"))))
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(server.url + "/")
    return context, page, requests, errors


def assert_nothing_external(requests: list[tuple[str, str | None]], server: LiveServer) -> None:
    outside = [url for url, _ in requests if not url.startswith((server.url + "/", "blob:", "data:"))]
    assert outside == [], f"the page loaded resources from elsewhere: {outside}"


def drop_files(page, selector: str, files: list[tuple[str, bytes]]) -> None:
    """Dispatch dragenter, dragover and drop on the element, carrying a DataTransfer holding these files."""
    given = [{"name": name, "data": base64.b64encode(data).decode()} for name, data in files]
    transfer = page.evaluate_handle("""(files) => {
        const transfer = new DataTransfer();
        for (const {name, data} of files) {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            transfer.items.add(new File([bytes], name, {type: name.endsWith(".png") ? "image/png" : "image/jpeg"}));
        }
        return transfer;
    }""", given)
    for event in ("dragenter", "dragover", "drop"):
        page.dispatch_event(selector, event, {"dataTransfer": transfer})


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) of an encoded image; fails if it does not decode."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None, "not a decodable image"
    return image.shape[1], image.shape[0]


def photo_sizes() -> dict[str, tuple[int, int]]:
    return {name: image_size((TEST_INPUTS / name).read_bytes()) for name in PHOTOS}


ZOOM_STATE = """(card) => {  // both pictures' transforms, as [scale, x, y], and whether the after's clip edge
    const frame = card.querySelector('.frame');  // (its own coordinates, transformed) is on the divider
    const [before, after] = ['img.before', 'img.after'].map((s) => card.querySelector(s));
    const parts = (img) => {
        const m = new DOMMatrix(getComputedStyle(img).transform);
        return [m.a, m.e, m.f];
    };
    const [scale, x] = parts(after);
    const clip = /([\\d.]+)%/.exec(getComputedStyle(after).clipPath);  // "inset(0px)" at 0
    const inset = clip ? parseFloat(clip[1]) : 0;
    const edge = x + scale * inset / 100 * frame.clientWidth;
    const divider = parseFloat(getComputedStyle(frame).getPropertyValue('--divider')) / 100 * frame.clientWidth;
    const fitted = Math.min(frame.clientWidth / after.naturalWidth, frame.clientHeight / after.naturalHeight);
    return {before: parts(before), after: parts(after), pixel: fitted * scale,
            clipOnDivider: inset === 0 || inset === 100 || Math.abs(edge - divider) < 0.5,
            level: card.querySelector('.zoom-level').textContent};
}"""


def check_zoom_and_pan(page, card, name: str) -> None:
    """Issue 30: the buttons, the wheel, a drag and the keyboard zoom and pan both pictures alike, the after's clip
    staying on the divider; 1:1 shows a result pixel as a screen pixel; Reset and 0 undo it all."""
    state = lambda: card.evaluate(ZOOM_STATE)  # noqa: E731
    assert state()["before"] == state()["after"] == [1, 0, 0]
    card.get_by_role("button", name=f"Zoom in: {name}").click()
    zoomed = state()
    assert zoomed["before"] == zoomed["after"] and zoomed["after"][0] == 1.5 and zoomed["level"] == "150%"
    assert zoomed["clipOnDivider"], zoomed
    box = card.locator(".frame").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2 + 30, box["y"] + box["height"] / 2 + 20, steps=4)
    page.mouse.up()
    dragged = state()
    assert dragged["before"] == dragged["after"] and dragged["after"][0] == 1.5, dragged
    assert dragged["after"][1:] == pytest.approx([zoomed["after"][1] + 30, zoomed["after"][2] + 20]), (zoomed, dragged)
    page.mouse.wheel(0, -200)
    wheeled = state()
    assert wheeled["before"] == wheeled["after"] and wheeled["after"][0] > 1.5 and wheeled["clipOnDivider"], wheeled
    card.locator(".frame").focus()
    page.keyboard.press("0")
    assert state()["after"] == state()["before"] == [1, 0, 0]
    page.keyboard.press("+")
    page.keyboard.press("ArrowRight")
    keyed = state()
    assert keyed["before"] == keyed["after"] and keyed["after"][0] == 1.5 and keyed["after"][1] < zoomed["after"][1]
    page.keyboard.press("1")
    assert abs(state()["pixel"] - 1) < 1e-6 and state()["before"] == state()["after"]
    card.get_by_role("button", name=f"Reset the zoom: {name}").click()
    assert state()["after"] == state()["before"] == [1, 0, 0] and state()["level"] == "100%"


def check_enlarged_screenshot(page, card, name: str, folder: Path) -> None:
    """Enlarged, the compare fills the window, its controls clear of the picture; screenshots of the picture at
    all-before, all-after and the divider in the middle: the two differ, and the middle one is the before's left
    half beside the after's right half. Escape gives the compare back to its card."""
    card.get_by_role("button", name=f"Enlarge: {name}").click()
    figure, frame = card.locator(".compare"), card.locator(".frame")
    shown, bar = figure.bounding_box(), card.locator(".zoom-bar").bounding_box()
    assert shown["x"] == shown["y"] == 0 and shown["width"] > 1050 and shown["height"] == 900, shown
    picture = frame.bounding_box()
    assert bar["y"] + bar["height"] <= picture["y"] and picture["height"] > 600, (bar, picture)
    assert card.get_by_label(f"Before / after: {name}").bounding_box()["y"] >= picture["y"] + picture["height"]
    slider = card.get_by_label(f"Before / after: {name}")
    shots = {}
    for value in ("100", "0", "50"):
        slider.fill(value)
        path = folder / f"compare-{value}.png"
        frame.screenshot(path=str(path), animations="disabled")
        shots[value] = cv2.imread(str(path)).astype(np.float32)
    before, after, middle = shots["100"], shots["0"], shots["50"]
    assert before.std() > 10 and after.std() > 10  # pictures, not an empty box
    assert np.abs(before - after).mean() > 3  # the restored picture is not the uploaded one (9 here)
    half = middle.shape[1] // 2
    assert np.abs(middle[:, : half - 4] - before[:, : half - 4]).mean() < 1
    assert np.abs(middle[:, half + 4:] - after[:, half + 4:]).mean() < 1
    page.keyboard.press("Escape")
    assert figure.evaluate("(f) => f.classList.contains('enlarged')") is False
    assert figure.bounding_box()["width"] < 1100


def test_drop_restore_compare_and_download(tmp_path, make_model, browser):
    from playwright.sync_api import expect

    sizes = photo_sizes()
    # HARNESS_SLOW: each image takes a second at least, so the page has per-file progress to show
    with LiveServer(tmp_path, "--model", str(make_model(2)), env={"API_KEY": None, "HARNESS_SLOW": "1"}) as server:
        context, page, requests, errors = open_dashboard(browser, server)
        expect(page.locator("#face-hint")).to_contain_text("Not available")  # /models: the tiny server has no faces
        expect(page.get_by_label("Restore faces")).to_be_disabled()
        page.evaluate("""() => {  // every state the job's panel passes through
            const job = document.getElementById('job');
            window.seen = [];
            new MutationObserver(() => window.seen.push({
                status: job.dataset.status,
                files: [...job.querySelectorAll('.result')].map((card) => card.dataset.state),
            })).observe(job, {subtree: true, childList: true, attributes: true, characterData: true});
        }""")

        drop_files(page, "#drop-zone", [*((name, (TEST_INPUTS / name).read_bytes()) for name in PHOTOS), BROKEN])
        expect(page.locator("#chosen-list li")).to_have_count(3)
        page.get_by_role("button", name="Restore", exact=True).click()

        job = page.locator("#job")
        expect(job).to_have_attribute("data-status", "completed")
        job_id = job.get_attribute("data-job-id")
        expect(page.locator("#job-state")).to_have_text("Completed")
        expect(page.locator("#announce")).to_contain_text("2 files restored, 1 failed")
        expect(page.locator("#job-progress-label")).to_have_text("3 of 3 files done")
        seen = page.evaluate("window.seen")
        assert any(state["status"] == "processing" and "processing" in state["files"] for state in seen), seen

        # Both sliders show their two pictures, decoded; the 2x model's result is twice the photo's size.
        compared = page.locator(".result[data-state=ok] .compare[data-ready=true]")
        expect(compared).to_have_count(2)
        shown = page.locator(".result[data-state=ok]").evaluate_all("""(cards) => cards.map((card) => ({
            name: card.querySelector('.result-name').textContent,
            before: [card.querySelector('img.before').naturalWidth, card.querySelector('img.before').naturalHeight],
            after: [card.querySelector('img.after').naturalWidth, card.querySelector('img.after').naturalHeight],
            sources: [card.querySelector('img.before').src, card.querySelector('img.after').src],
        }))""")
        assert sorted(card["name"] for card in shown) == sorted(PHOTOS)
        for card in shown:
            width, height = sizes[card["name"]]
            assert card["before"] == [width, height], card
            assert card["after"] == [2 * width, 2 * height], card
            assert all(source.startswith("blob:") for source in card["sources"]), card

        # The slider is a labelled range input; the keyboard moves the clip of the "after" picture.
        slider = page.get_by_label("Before / after: rocket.jpg")
        after = page.locator(".result", has_text="rocket.jpg").locator("img.after")
        clip = after.evaluate("(img) => getComputedStyle(img).clipPath")
        slider.focus()
        for _ in range(10):
            page.keyboard.press("ArrowLeft")
        assert slider.input_value() == "40"
        moved = after.evaluate("(img) => getComputedStyle(img).clipPath")
        assert moved != clip and "40%" in moved, (clip, moved)
        page.keyboard.press("End")
        assert "100%" in after.evaluate("(img) => getComputedStyle(img).clipPath")
        slider.fill("50")
        check_zoom_and_pan(page, page.locator(".result", has_text="rocket.jpg"), "rocket.jpg")
        check_enlarged_screenshot(page, page.locator(".result", has_text="rocket.jpg"), "rocket.jpg", tmp_path)

        # The broken file's error, in plain words, on its own card.
        broken = page.locator(".result[data-state=error]")
        expect(broken).to_have_count(1)
        expect(broken.locator(".result-name")).to_have_text("broken.png")
        expect(broken.locator(".result-error")).to_be_visible()
        expect(broken.locator(".result-error")).to_contain_text("broken.png")
        expect(broken.locator(".result-error")).to_contain_text("not an image")
        expect(broken.locator(".compare")).to_be_hidden()

        # The ZIP, downloaded through the page: the two results, named after the photos, each twice the size.
        with page.expect_download() as download_info:
            page.get_by_role("button", name="Download all as ZIP").click()
        download = download_info.value
        assert download.suggested_filename == f"restorecli-{job_id}.zip"
        archive = zipfile.ZipFile(io.BytesIO(Path(download.path()).read_bytes()))
        assert sorted(archive.namelist()) == sorted(PHOTOS)
        for name in PHOTOS:
            width, height = sizes[name]
            assert image_size(archive.read(name)) == (2 * width, 2 * height), name

        # One result on its own, under its photo's name.
        with page.expect_download() as download_info:
            page.get_by_role("button", name="Download rocket.jpg").click()
        single = download_info.value
        assert single.suggested_filename == "rocket.jpg"
        assert image_size(Path(single.path()).read_bytes()) == (2 * sizes["rocket.jpg"][0], 2 * sizes["rocket.jpg"][1])

        # The job is in this browser's list; after a reload, choosing it shows its results again; it can be forgotten.
        page.reload()
        recent = page.locator("#recent-list li")
        expect(recent).to_have_count(1)
        expect(recent).to_contain_text("3 files")
        expect(recent).to_contain_text("Completed")
        expect(job).to_be_hidden()
        recent.get_by_role("button", name="Show the job").click()
        expect(job).to_have_attribute("data-status", "completed")
        expect(page.locator(".compare[data-ready=true]")).to_have_count(2)
        expect(page.locator(".result[data-state=error] .result-error")).to_contain_text("not an image")
        # A job the server no longer has says so.
        with server.client() as client:
            assert client.delete(f"/jobs/{job_id}").status_code == 200
        recent.get_by_role("button", name="Show the job").click()
        expect(job).to_have_attribute("data-status", "gone")
        expect(page.locator("#job-error")).to_contain_text("no longer on the server")
        expect(recent).to_contain_text("No longer on the server")
        recent.get_by_role("button", name="Forget").click()
        expect(recent).to_have_count(0)

        assert any(f"/events/{job_id}" in url for url, _ in requests), "the page did not follow the job's events"
        assert_nothing_external(requests, server)
        assert errors == []
        context.close()


def test_api_key_is_asked_for_once_and_sent(tmp_path, make_model, browser):
    from playwright.sync_api import expect

    sizes = photo_sizes()
    with LiveServer(tmp_path, "--model", str(make_model(2)), env={"API_KEY": "secret"}) as server:
        context, page, requests, errors = open_dashboard(browser, server)
        dialog = page.locator("#key-dialog")
        expect(dialog).to_be_visible()

        key = page.get_by_role("textbox", name="API key")
        key.fill("not-the-key")
        key.press("Enter")
        expect(page.locator("#key-error")).to_contain_text("wrong API key")
        expect(dialog).to_be_visible()
        key.fill("secret")
        page.get_by_role("button", name="Use this key").click()
        expect(dialog).to_be_hidden()
        expect(page.locator("#face-hint")).to_contain_text("Not available")  # /models answered with the key

        # Without the event stream the page falls back to polling /status.
        page.route("**/events/**", lambda route: route.abort())
        # The drop zone is a button: Enter opens the file picker.
        with page.expect_file_chooser() as chooser_info:
            page.locator("#drop-zone").focus()
            page.keyboard.press("Enter")
        chooser_info.value.set_files(str(TEST_INPUTS / "rocket.jpg"))
        expect(page.locator("#chosen-list li")).to_have_count(1)
        page.get_by_role("button", name="Restore", exact=True).click()
        job = page.locator("#job")
        expect(job).to_have_attribute("data-status", "completed")
        job_id = job.get_attribute("data-job-id")
        expect(page.locator(".compare[data-ready=true]")).to_have_count(1)

        # With a key, the ZIP comes through fetch into a blob, named by the server's header.
        with page.expect_download() as download_info:
            page.get_by_role("button", name="Download all as ZIP").click()
        download = download_info.value
        assert download.suggested_filename == f"restorecli-{job_id}.zip"
        archive = zipfile.ZipFile(io.BytesIO(Path(download.path()).read_bytes()))
        assert archive.namelist() == ["rocket.jpg"]
        width, height = sizes["rocket.jpg"]
        assert image_size(archive.read("rocket.jpg")) == (2 * width, 2 * height)

        # The key is kept for the session: a reload does not ask again.
        page.reload()
        expect(page.locator("body")).to_have_attribute("data-ready", "true")
        expect(dialog).to_be_hidden()

        api_calls = [(url, sent) for url, sent in requests
                     if url.startswith(server.url + "/") and not url.startswith((server.url + "/dashboard/",
                                                                                server.url + "/health"))
                     and url != server.url + "/"]
        assert any(f"/status/{job_id}" in url for url, _ in api_calls), "the page did not poll /status"
        assert any("/enhance" in url and sent == "secret" for url, sent in api_calls)
        assert all(sent in ("secret", "not-the-key") for _, sent in api_calls), api_calls
        assert_nothing_external(requests, server)
        assert errors == []
        context.close()


def test_the_face_preset_and_colour_choices_reach_the_job(tmp_path, make_model, browser):
    """Issue 32: the page offers the face models the server can run (not one whose weights it lacks), marks a
    non-commercial licence, shows the fidelity slider only for a model that takes one, offers the presets whose
    models the server offers and colourising where it can, and the job gets what was chosen. No worker: the job's
    options are what is checked."""
    from playwright.sync_api import expect

    from restorecli.jobs.store import JobStore
    from restorecli.models.registry import REGISTRY

    weights = tmp_path / "weights"
    weights.mkdir()
    for name in ("codeformer", "restoreformer", "retinaface-resnet50", "scunet-color-real-psnr", "realesrgan-x4plus",
                 "ddcolor"):  # present: the server looks no further
        (weights / REGISTRY[name].filename).write_bytes(b"weights")
    allowed = ("--allow-face-model", "codeformer", "--allow-face-model", "restoreformer", "--allow-model",
               "scunet-color-real-psnr", "--allow-model", "realesrgan-x4plus")
    with LiveServer(tmp_path, "--model", str(make_model(2)), "--weights-dir", str(weights), *allowed, workers=0,
                    env={"API_KEY": None}) as server:
        said = server.output()  # serve says what it offers before its first request
        assert "faces:    not available (gfpgan-1.4, retinaface-resnet50); jobs asking for them are refused (422) " \
               "until: restorecli download-weights gfpgan-1.4; requests may also ask for codeformer" in said
        assert "requests may also ask for codeformer, restoreformer" in said  # the detector is installed
        context, page, requests, errors = open_dashboard(browser, server)
        faces = page.get_by_label("Restore faces")
        expect(faces).to_be_enabled()
        model, fidelity = page.get_by_label("Face model"), page.get_by_label("Fidelity")
        expect(model).to_be_hidden()  # until faces are to be restored
        faces.check()
        expect(model.locator("option")).to_have_text(["codeformer (non-commercial licence)", "restoreformer"])
        expect(page.locator("#face-model-hint")).to_contain_text("S-Lab License 1.0 (non-commercial use only)")
        expect(fidelity).to_be_visible()
        model.select_option("restoreformer")
        expect(fidelity).to_be_hidden()  # RestoreFormer takes none
        model.select_option("codeformer")
        fidelity.focus()
        for _ in range(6):
            page.keyboard.press("ArrowRight")
        expect(page.locator("#fidelity-value")).to_have_text("0.8")

        preset = page.get_by_label("Preset")
        expect(preset.locator("option")).to_have_text(["None: the model chosen", "old-photo", "portrait", "denoise"])
        preset.select_option("old-photo")
        expect(page.locator("#preset-hint")).to_contain_text("Runs scunet-color-real-psnr, then realesrgan-x4plus.")
        expect(page.get_by_label("Model", exact=True)).to_be_disabled()  # the preset chooses the models
        page.get_by_label("Colourise").select_option("auto")

        drop_files(page, "#drop-zone", [("rocket.jpg", (TEST_INPUTS / "rocket.jpg").read_bytes())])
        page.get_by_role("button", name="Restore", exact=True).click()
        job = page.locator("#job")
        expect(job).to_have_attribute("data-job-id", re.compile(r"\d{8}-\d{6}-[0-9a-f]{32}"))
        store = JobStore(server.queue)
        try:
            options = store.get(job.get_attribute("data-job-id")).options
        finally:
            store.close()
        assert (options["face_enhance"], options["face_model"], options["face_fidelity"]) == (True, "codeformer", 0.8)
        assert (options["preset"], options["model"], options["colorize"]) == (
            "old-photo", "scunet-color-real-psnr,realesrgan-x4plus", "auto")
        assert_nothing_external(requests, server)
        assert errors == []
        context.close()
