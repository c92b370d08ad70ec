"""Videos in the dashboard (issue 33), in Debian's chromium driven by Playwright against a real ``restorecli serve``
with small video limits: the picker offers the server's formats (``/health``'s), the hint says the limits, a video
over the size limit is refused in the page and one over the duration by the server (its 422 detail shown, as is
its 413); a finished video plays beside its input, the input following the result's play, pause, seek and speed
(streamed from the server, or with an API key fetched with it into blob: URLs); a video this
browser cannot play (AVI) is offered as a download instead of a broken player; a video's frames done and to do are
shown while it runs.

The fast tests run on a server without a worker: its job stays queued, and the page is given that job's status
document turned into the one it will have (processing, or finished with the input as its result), so that the
players load real files from the server in a few seconds. The slow one restores through a worker: nox -s slow."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from live_server import LiveServer
from test_dashboard import CHROMIUM, assert_nothing_external, browser, drop_files, open_dashboard  # noqa: F401
from test_video import FRAMES, make_video, moving_frame

av = pytest.importorskip("av", reason="PyAV (restorecli[video]) is not installed: the video tests need it")

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")

# A 24-frame clip (1 s, about 13 KB) is within the video limits, a 48-frame one (2 s) over the duration, a 96-frame
# one over the size
VIDEO_MB, VIDEO_SECONDS = 0.04, 1.5
H264 = 'video/mp4; codecs="avc1.64000a"'  # what the server's x264 writes for these clips (High profile)


def make_avi(path: Path) -> Path:
    """A silent AVI of ``FRAMES`` moving frames (MPEG-4 Part 2 at 24 fps): a container no browser plays."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(FRAMES):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(moving_frame(i), format="rgb24")))
        out.mux(stream.encode(None))
    return path


def video_facts(data: bytes) -> tuple[float, list[int]]:
    """A video file's duration (seconds) and frame size, as PyAV reads them."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        return container.duration / 1_000_000, [stream.width, stream.height]


def start_server(folder: Path, workers: int) -> LiveServer:
    from conftest import tiny_compact_state
    from safetensors.torch import save_file

    model = folder / "tiny-x2.safetensors"
    save_file(tiny_compact_state(2), str(model))
    return LiveServer(folder, "--model", str(model), "--max-video-mb", str(VIDEO_MB), "--max-video-seconds",
                      str(VIDEO_SECONDS), env={"API_KEY": None}, workers=workers).start()


@pytest.fixture(scope="module")
def idle(tmp_path_factory):
    """A server without a worker, holding one queued job of an MP4 (H.264 and AAC) and an AVI:
    ``(server, job_id, clips)``, ``clips`` the two files by name."""
    folder = tmp_path_factory.mktemp("dashboard-video")
    clips = {"clip.mp4": make_video(folder / "clip.mp4", faststart=True), "clip.avi": make_avi(folder / "clip.avi")}
    server = start_server(folder, workers=0)
    try:
        with server.client() as client:
            sent = client.post("/enhance", files=[("files", (name, path.read_bytes())) for name, path in clips.items()])
        assert sent.status_code == 202, sent.text
        yield server, sent.json()["job_id"], clips
    finally:
        server.stop()


def show_job(page, job_id: str, files: int) -> None:
    """Show a job through the page's list of recent jobs, as a person who started it here would."""
    page.evaluate("""([id, files]) => localStorage.setItem('restorecli.recentJobs',
        JSON.stringify([{id, files, time: Date.now(), status: 'queued'}]))""", [job_id, files])
    page.reload()
    page.locator("#recent-list").get_by_role("button", name="Show the job").click()


def show_as(page, server: LiveServer, job_id: str, change) -> None:
    """Show the queued job with its status document as ``change(document)`` makes it (no events: the page polls)."""
    with server.client() as client:
        document = client.get(f"/status/{job_id}").json()
    change(document)
    page.route("**/events/**", lambda route: route.abort())
    page.route(f"**/status/{job_id}", lambda route: route.fulfill(json=document))
    show_job(page, job_id, len(document["results"]))


def finished_with_inputs(document: dict) -> None:
    """The job as if completed, each result its input (the player is given real files, the server's)."""
    document.update(status="completed", progress={"done": 2, "total": 2})
    for result in document["results"]:
        result.update(status="ok", url=result["input_url"])


PLAYERS = """(card) => {  // both players' state
    const side = (video) => ({ready: video.readyState, time: video.currentTime, paused: video.paused,
                               duration: video.duration, size: [video.videoWidth, video.videoHeight],
                               rate: video.playbackRate, seeking: video.seeking, src: video.currentSrc});
    return {before: side(card.querySelector('video.video-before')), after: side(card.querySelector('video.video-after'))};
}"""


def both(page, card, condition: str) -> None:
    """Wait until ``condition`` holds of the card's players, ``b`` the input's and ``a`` the result's."""
    page.wait_for_function(f"""(card) => {{
        const [b, a] = ['video.video-before', 'video.video-after'].map((s) => card.querySelector(s));
        return {condition};
    }}""", arg=card.element_handle())


def check_players(page, card, name: str, duration: float, sizes: tuple[list[int], list[int]]) -> None:
    """The view of a playable result: a <video> with controls of the result's duration and size beside the input;
    a seek, play, pause and speed on the result carry over to the input; "Play both" works from the keyboard; paused,
    both show a picture side by side (``check_side_by_side``); "Input beside it" hides and shows the input; Tab
    reaches the result's player."""
    from playwright.sync_api import expect

    if not page.evaluate("(type) => document.createElement('video').canPlayType(type)", H264):
        pytest.skip("this chromium build plays no H.264 (proprietary codecs left out): the MP4 cannot be played")
    expect(card.locator(".video-compare[data-ready=true]")).to_be_visible()
    after = card.get_by_label(f"After: {name}", exact=True)
    expect(after).to_have_attribute("controls", "")
    state = lambda: card.evaluate(PLAYERS)  # noqa: E731
    shown = state()
    assert shown["after"]["ready"] >= 2 and shown["before"]["ready"] >= 2, shown
    assert (shown["before"]["size"], shown["after"]["size"]) == sizes, shown
    assert shown["after"]["src"].startswith("http://127.0.0.1:"), shown  # no key: streamed from the server
    assert shown["after"]["duration"] == pytest.approx(duration, abs=0.05), (shown, duration)
    expect(card.locator(".video-size")).to_contain_text(f"{duration:.2f} seconds")

    after.evaluate("(video) => { video.currentTime = 0.5; }")  # as the player's own seek bar does
    both(page, card, "!a.seeking && !b.seeking && a.currentTime === 0.5 && b.currentTime === 0.5")
    after.evaluate("(video) => { video.playbackRate = 0.1; }")  # slow: the 1 s clip must not end under the test
    card.get_by_role("button", name=f"Play both: {name}").focus()
    page.keyboard.press("Enter")
    # the input follows on the result's play, pause and ratechange events, which the browser fires a task later
    both(page, card, "!b.paused && !a.paused && b.playbackRate === 0.1 && a.currentTime > 0.52")  # they play
    card.get_by_role("button", name=f"Pause both: {name}").click()
    both(page, card, "a.paused && b.paused && !b.seeking")
    paused = state()
    check_side_by_side(card, name, identical=sizes[0] == sizes[1])
    assert paused["after"]["time"] > 0.52, paused  # both at one moment (the media clock keeps microseconds)
    assert paused["before"]["time"] == pytest.approx(paused["after"]["time"], abs=1e-3), paused

    beside = card.get_by_role("button", name=f"Input beside it: {name}")
    beside.click()
    expect(card.get_by_label(f"Before: {name}", exact=True)).to_be_hidden()
    expect(beside).to_have_attribute("aria-pressed", "false")
    beside.click()
    expect(card.get_by_label(f"Before: {name}", exact=True)).to_be_visible()
    page.keyboard.press("Tab")  # from the pair's buttons to the result's player (the input has no controls)
    expect(after).to_be_focused()
    expect(card.locator(".result-note")).to_be_hidden()


def check_side_by_side(card, name: str, identical: bool) -> None:
    """Screenshots of the two paused players: each shows a picture (not an empty box), the input left of the result
    on one line, and where both play one file (``identical``), the same frame (both at one moment)."""
    import cv2
    import numpy as np

    players = [card.get_by_label(f"{side}: {name}", exact=True) for side in ("Before", "After")]
    players[1].scroll_into_view_if_needed()
    before, after = boxes = [player.bounding_box() for player in players]  # in the viewport: before a scroll
    shots = [cv2.imdecode(np.frombuffer(player.screenshot(animations="disabled"), np.uint8),
                          cv2.IMREAD_COLOR).astype(np.float32) for player in players]
    assert before["x"] + before["width"] <= after["x"] and abs(before["y"] - after["y"]) < 1, boxes
    assert shots[0].std() > 10 and shots[1].std() > 10  # pictures, not an empty box
    if identical:  # rows clear of the "Before"/"After" tags and of the result's controls (drawn over its bottom)
        band = slice(shots[0].shape[0] // 10, shots[0].shape[0] * 4 // 10)
        assert np.abs(shots[0][band] - shots[1][band]).mean() < 2  # a frame apart: the block 15 px away (11)


def check_unplayable(page, card, name: str, expected: bytes) -> None:
    """Chromium plays no AVI: the card says so, shows no player, and offers the file's download (``expected``'s
    bytes, under its name)."""
    from playwright.sync_api import expect

    expect(card.locator(".result-note")).to_have_text(
        f"This browser cannot play {name} (its container or codec); download it to watch it in a video player.")
    expect(card.locator(".video-compare")).to_be_hidden()
    with page.expect_download() as download_info:
        card.get_by_role("button", name=f"Download {name}").click()
    download = download_info.value
    assert download.suggested_filename == name
    assert Path(download.path()).read_bytes() == expected


def test_the_upload_form_offers_the_server_s_video_types_and_refuses_what_it_would(idle, browser, tmp_path):
    """The picker accepts the suffixes ``/health`` lists (images and videos); the hint states the video limits;
    a video over the size limit is refused in the page before any upload, naming the file and the limit; a video
    over the duration limit is refused by the server and the page shows its 422 detail."""
    from playwright.sync_api import expect

    from restorecli.images.formats import IMAGE_SUFFIXES
    from restorecli.video.formats import ANIMATED_SUFFIXES, VIDEO_SUFFIXES

    server, _, _ = idle
    with server.client() as client:
        health = client.get("/health").json()
    formats, limits = health["formats"], health["limits"]
    assert formats == {"images": sorted(IMAGE_SUFFIXES), "videos": sorted(VIDEO_SUFFIXES),
                       "animated": sorted(ANIMATED_SUFFIXES)}
    context, page, requests, errors = open_dashboard(browser, server)
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    accept = page.locator("#file-input").get_attribute("accept").split(",")
    assert sorted(accept) == sorted(formats["images"] + formats["videos"])
    hint = page.locator("#limits")
    expect(hint).to_contain_text(f"videos ({', '.join(formats['videos'])}) of at most {VIDEO_MB} MB")
    expect(hint).to_contain_text("1.5 seconds")
    if limits.get("max_video_frames"):  # --max-video-frames, where the server has it
        expect(hint).to_contain_text(f"1.5 seconds and {limits['max_video_frames']} frames.")
    expect(hint).to_contain_text("animated .apng, .gif, .png, .webp are restored frame by frame")

    big = make_video(tmp_path / "big.mp4", frames=96).read_bytes()
    assert len(big) > VIDEO_MB * 1048576
    drop_files(page, "#drop-zone", [("big.mp4", big)])
    page.get_by_role("button", name="Restore", exact=True).click()
    expect(page.locator("#alert")).to_have_text(
        f"big.mp4 is {len(big) / 1024:.0f} KB; the server takes videos of at most {VIDEO_MB} MB.")
    assert not any("/enhance" in url for url, _ in requests)

    page.get_by_role("button", name="Clear the list").click()
    drop_files(page, "#drop-zone", [("long.mp4", make_video(tmp_path / "long.mp4", frames=48).read_bytes())])
    page.get_by_role("button", name="Restore", exact=True).click()
    expect(page.locator("#alert")).to_have_text(
        "The upload was refused: long.mp4: 2.0 seconds long, over the limit of 1.5 seconds a video.")
    expect(page.locator("#job")).to_be_hidden()
    assert errors == []
    context.close()


def test_the_server_s_413_for_a_video_over_its_size_is_shown(idle, browser, tmp_path):
    """Where the page's own check lets a video through (here: /health, as the page sees it, states a larger video
    limit than the server keeps), the server's 413 detail is what the page shows, and the server stays up."""
    from playwright.sync_api import expect

    server, _, _ = idle

    def looser(route) -> None:
        answer = route.fetch()
        document = answer.json()
        document["limits"]["max_video_mb"] = 100
        route.fulfill(response=answer, json=document)

    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    page.route("**/health", looser)
    page.goto(server.url + "/")
    expect(page.locator("#limits")).to_contain_text("of at most 100 MB")
    big = make_video(tmp_path / "big.mp4", frames=96).read_bytes()
    drop_files(page, "#drop-zone", [("big.mp4", big)])
    with page.expect_response("**/enhance") as sent:
        page.get_by_role("button", name="Restore", exact=True).click()
    assert sent.value.status == 413
    expect(page.locator("#alert")).to_have_text(
        f"That is more than the server accepts: big.mp4: over the limit of {VIDEO_MB} MB a video.")
    expect(page.locator("#job")).to_be_hidden()
    with server.client() as client:
        assert client.get("/health").status_code in (200, 503)  # 503: no worker here, but up
    context.close()


def test_a_video_s_frames_are_shown_while_it_runs(idle, browser):
    """While a video is restored, its card and the job's progress say which frame it is at, from its entry's
    ``frames`` ({done, total}) in the status document. The live job here waits for no worker, so its status
    document is given that entry as a worker's telling makes it (test_video_server: the server's side)."""
    from playwright.sync_api import expect

    server, job_id, _ = idle
    context, page, _, errors = open_dashboard(browser, server)

    def processing(document: dict) -> None:
        document.update(status="processing", progress={"done": 0, "total": 2})
        document["results"][0].update(status="processing", frames={"done": 12, "total": 24})

    show_as(page, server, job_id, processing)
    card = page.locator(".result", has_text="clip.mp4")
    expect(card.locator(".result-state")).to_have_text("Restoring… frame 12 of 24")
    frames = card.get_by_label("clip.mp4: frame 12 of 24")
    assert frames.evaluate("(bar) => [bar.value, bar.max]") == [12, 24]
    expect(page.locator("#job-progress-label")).to_have_text("0 of 2 files done · clip.mp4: frame 12 of 24")
    expect(page.locator(".result", has_text="clip.avi").locator(".result-frames")).to_be_hidden()
    assert errors == []
    context.close()


def test_a_finished_video_plays_beside_its_input_in_step(idle, browser):
    """The player view, on the server's files (here the input as the result: see the module's docstring)."""
    server, job_id, clips = idle
    context, page, requests, errors = open_dashboard(browser, server)
    show_as(page, server, job_id, finished_with_inputs)
    duration, size = video_facts(clips["clip.mp4"].read_bytes())
    check_players(page, page.locator(".result", has_text="clip.mp4"), "clip.mp4", duration, (size, size))
    assert_nothing_external(requests, server)
    assert errors == []
    context.close()


def test_with_a_key_the_players_are_given_the_videos_fetched_with_it(idle, browser):
    """A player cannot send the X-API-Key header: with a key in hand the page fetches each video with it and gives
    the players blob: URLs (which the page's policy lets them play). The server here has no key and ignores the
    one sent; that the page sends it, and plays what came back, is what is checked."""
    from playwright.sync_api import expect

    server, job_id, clips = idle
    context, page, requests, errors = open_dashboard(browser, server)
    page.evaluate("() => sessionStorage.setItem('restorecli.apiKey', 'the-key')")
    show_as(page, server, job_id, finished_with_inputs)
    card = page.locator(".result", has_text="clip.mp4")
    expect(card.locator(".video-compare[data-ready=true]")).to_be_visible()
    shown = card.evaluate(PLAYERS)
    assert shown["before"]["src"].startswith("blob:") and shown["after"]["src"].startswith("blob:"), shown
    duration, _ = video_facts(clips["clip.mp4"].read_bytes())
    assert shown["after"]["duration"] == pytest.approx(duration, abs=0.05), shown
    fetched = [sent for url, sent in requests if f"/jobs/{job_id}/inputs/" in url]
    assert fetched and set(fetched) == {"the-key"}, requests
    assert errors == []
    context.close()


def test_a_video_the_browser_cannot_play_is_offered_as_a_download(idle, browser):
    server, job_id, clips = idle
    context, page, _, errors = open_dashboard(browser, server)
    show_as(page, server, job_id, finished_with_inputs)
    check_unplayable(page, page.locator(".result", has_text="clip.avi"), "clip.avi", clips["clip.avi"].read_bytes())
    assert errors == []
    context.close()


@pytest.mark.slow
def test_videos_dropped_on_the_page_are_restored_and_shown(tmp_path, browser):
    """End to end through a worker: an MP4 and an AVI dropped on the page are restored; the MP4 plays at twice its
    size beside its input, of the restored file's duration; the AVI is offered as a download of the restored file.
    (The fast tests above check the same views on a server without a worker.)"""
    from playwright.sync_api import expect

    clips = {"clip.mp4": make_video(tmp_path / "clip.mp4", faststart=True), "clip.avi": make_avi(tmp_path / "clip.avi")}
    with start_server(tmp_path, workers=1) as server:
        context, page, requests, errors = open_dashboard(browser, server)
        drop_files(page, "#drop-zone", [(name, path.read_bytes()) for name, path in clips.items()])
        page.get_by_role("button", name="Restore", exact=True).click()
        job = page.locator("#job")
        expect(job).to_have_attribute("data-status", "completed")
        with server.client() as client:
            results = client.get(f"/status/{job.get_attribute('data-job-id')}").json()["results"]
            restored = {result["original_filename"]: client.get(result["url"]).content for result in results}
        duration, size = video_facts(restored["clip.mp4"])
        assert size == [128, 96]
        check_unplayable(page, page.locator(".result", has_text="clip.avi"), "clip.avi", restored["clip.avi"])
        check_players(page, page.locator(".result", has_text="clip.mp4"), "clip.mp4", duration, ([64, 48], size))
        expect(page.locator(".result", has_text="clip.mp4").locator(".video-size")).to_contain_text(
            "64 × 48 → 128 × 96 pixels")
        assert_nothing_external(requests, server)
        assert errors == []
        context.close()
