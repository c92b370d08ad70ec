"""`restorecli restore` on a real pseudo-terminal: result lines sit above the live bar, never inside it, and the
bar moves by the tile while one large image runs. The screen a person would see comes from a terminal emulator."""

from __future__ import annotations

import fcntl
import io
import os
import re
import select
import shutil
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import cv2
import pyte
import pytest

from conftest import TEST_INPUTS, read_rgb
from restorecli.cli.render import BatchRenderer, same_terminal

COLUMNS, LINES = 100, 30
CLI = [sys.executable, "-c", "from restorecli.cli.app import main; main()"]
SGR_COLOUR = re.compile(rb"\x1b\[[0-9;]*(?:3[0-9]|4[0-9]|9[0-7])(?:;[0-9;]*)?m")  # a foreground or background colour
CONTROL = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


def run_on_a_terminal(args: list[str], cwd: Path, stdout_to_pipe: bool = False, columns: int = COLUMNS, **env: str
                      ) -> tuple[int, bytes, bytes]:
    """Run the CLI with stdin, stderr (and stdout, unless ``stdout_to_pipe``) on a pseudo-terminal of ``columns``
    by 30 lines. Returns the exit code, everything the terminal received, and what the pipe received."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", LINES, columns, 0, 0))
    environ = {k: v for k, v in os.environ.items()
               if k not in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS", "LINES")}
    environ.update(TERM="xterm-256color", **env)
    process = subprocess.Popen([*CLI, *args], cwd=cwd, env=environ, stdin=slave, stderr=slave,
                               stdout=subprocess.PIPE if stdout_to_pipe else slave)
    os.close(slave)  # the child holds the only copies: reading the master ends (EIO) when it exits
    received, deadline = bytearray(), time.monotonic() + 180
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 1)[0]:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: no process holds the terminal any more
                    break
                if not chunk:
                    break
                received += chunk
            elif process.poll() is not None and not select.select([master], [], [], 0.2)[0]:
                break
        piped = process.stdout.read() if stdout_to_pipe else b""
        code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
        os.close(master)
    return code, bytes(received), piped


def screen_of(received: bytes, columns: int = COLUMNS) -> list[str]:
    """The final screen, line by line, as an xterm would show it."""
    screen = pyte.Screen(columns, LINES)
    pyte.ByteStream(screen).feed(received)
    return [line.rstrip() for line in screen.display]


def frames_of(received: bytes) -> list[bytes]:
    """Each state the terminal's lines went through, without colours and cursor moves."""
    return re.split(rb"[\r\n]", CONTROL.sub(b"", received))


@pytest.fixture
def three_photos(tmp_path, make_model):
    """Three small images under tmp_path/photos, and a tiny x2 model; the CLI runs in tmp_path with relative
    names, so each result path is short enough for one terminal line."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("cameraman_gray.png", "coffee_alpha.png", "rocket.jpg"):
        shutil.copy(TEST_INPUTS / name, folder / name)
    return make_model(2)


def _restore_args(model: Path, *extra: str) -> list[str]:
    return ["restore", "photos", "-o", "out", "--model", str(model), "--device", "cpu", *extra]


RESULTS = ["out/cameraman_gray.png", "out/coffee_alpha.png", "out/rocket.jpg"]


def test_results_sit_on_lines_of_their_own_above_the_bar(three_photos, tmp_path):
    """Issue 15: with stdout and stderr on one terminal (a shell, tmux), a result path written raw to stdout
    landed in the live progress line and left its remains on the screen."""
    code, received, _ = run_on_a_terminal(_restore_args(three_photos), tmp_path)
    assert code == 0, received.decode(errors="replace")
    assert b"restoring" in received  # the live bar was shown
    screen = screen_of(received)
    for path in RESULTS:
        assert path in screen, screen  # whole, on a line of its own
    assert not [line for line in screen if "restoring" in line], screen  # the bar went and left nothing behind
    for frame in frames_of(received):  # nor did any line ever hold both a result and the bar
        assert not (b"restoring" in frame and any(path.encode() in frame for path in RESULTS)), frame
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [Path(p).name for p in RESULTS]


def test_json_lines_on_the_terminal_stay_whole_too_and_no_color_is_honoured(three_photos, tmp_path):
    wide = 300  # a JSON line is longer than 100 columns, and the terminal would fold it
    code, received, _ = run_on_a_terminal(_restore_args(three_photos, "--json"), tmp_path, columns=wide, NO_COLOR="1")
    assert code == 0, received.decode(errors="replace")
    assert b"restoring" in received and not SGR_COLOUR.search(received)  # the bar, without colour
    screen = screen_of(received, wide)
    items = [line for line in screen if line.startswith('{"type": "item"')]
    assert len(items) == 3 and all(line.endswith("}") for line in items), screen  # whole lines
    assert not [line for line in screen if "restoring" in line], screen


def test_results_piped_from_a_terminal_session_go_to_stdout_byte_for_byte(three_photos, tmp_path):
    """``restorecli restore ... | xargs``: the bar stays on the terminal, the paths go down the pipe as before."""
    code, received, piped = run_on_a_terminal(_restore_args(three_photos), tmp_path, stdout_to_pipe=True)
    assert code == 0, received.decode(errors="replace")
    assert piped == "".join(f"{path}\n" for path in RESULTS).encode()
    assert b"restoring" in received and not any(path.encode() in received for path in RESULTS)


def test_the_bar_moves_by_the_tile_while_one_large_image_runs(make_model, tmp_path):
    """A large image on a CPU takes minutes: the bar, its percentage and its estimate follow the tiles of the
    image in hand instead of sitting at 0 until the image is written; the count still says whole images."""
    photo = cv2.resize(read_rgb(TEST_INPUTS / "rocket.jpg"), (768, 768), interpolation=cv2.INTER_CUBIC)
    (tmp_path / "photos").mkdir()
    cv2.imwrite(str(tmp_path / "photos" / "large.png"), photo)
    code, received, _ = run_on_a_terminal(_restore_args(make_model(2), "--tile", "32"), tmp_path)
    assert code == 0, received.decode(errors="replace")
    frames = [frame for frame in frames_of(received) if b"restoring" in frame]
    before_done = [frame for frame in frames if re.search(rb"\b0/1\b", frame)]
    percentages = {int(m) for frame in before_done for m in re.findall(rb"(\d+)%", frame)}
    assert len(percentages - {0, 100}) >= 2, frames  # states between nothing done and the whole image
    assert re.search(rb"\(tile \d+/\d+\)", b"".join(before_done))
    assert any(re.search(rb"100% +1/1\b", frame) for frame in frames), frames  # whole images at the end
    assert screen_of(received).count("out/large.png") == 1


def test_the_renderer_counts_whole_images_and_fractions_of_the_one_in_hand():
    renderer = BatchRenderer(as_json=False, stdout=io.StringIO())
    renderer("start", 2)
    task = renderer.progress.tasks[0]
    renderer("item", "a.png")
    renderer("tiles", (4, 16))
    assert task.completed == 0.25 and renderer.images_column.render(task).plain == "0/2"
    renderer("tiles", (16, 16))
    renderer("tiles", (2, 16))  # the alpha pass (or a retry in smaller tiles) starts over: the bar does not go back
    assert task.completed == 1.0 and renderer.images_column.render(task).plain == "0/2"
    renderer("done", _item("a.png"))
    assert task.completed == 1 and renderer.images_column.render(task).plain == "1/2"
    renderer("item", "b.png")
    renderer("tiles", (1, 2))
    assert task.completed == 1.5
    renderer("done", _item("b.png"))
    assert task.completed == 2 and renderer.images_column.render(task).plain == "2/2"


def _item(name: str):
    from restorecli.pipeline import ItemResult

    return ItemResult(name, f"out/{name}", "ok")


def test_same_terminal_compares_the_devices_behind_two_streams(tmp_path):
    master, slave = os.openpty()
    other_master, other_slave = os.openpty()
    with os.fdopen(os.dup(slave), "w") as out, os.fdopen(os.dup(slave), "w") as err, \
            open(os.ttyname(slave), "w") as reopened, os.fdopen(other_slave, "w") as other, \
            open(tmp_path / "file", "w") as file:
        assert same_terminal(out, err) and same_terminal(out, reopened)
        assert not same_terminal(out, other) and not same_terminal(file, err) and not same_terminal(file, file)
        assert not same_terminal(io.StringIO(), err)
    for fd in (master, slave, other_master):
        os.close(fd)
