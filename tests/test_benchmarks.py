"""The benchmarks' layout (issue 29): each is a script that answers --help, none imports another round a cycle, and
one function writes their figures into docs/performance.md. Nothing here measures anything."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
MODULES = {path.stem: path for path in sorted(BENCHMARKS.glob("*.py"))}
SCRIPTS = sorted(name for name in MODULES if name != "common")


def _imports(path: Path) -> set[str]:
    """The benchmark modules ``path`` imports anywhere in its code, function-local imports too."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module)
    return found & set(MODULES)


def test_no_benchmark_imports_another_round_a_cycle():
    graph = {name: _imports(path) for name, path in MODULES.items()}
    cycles = []

    def walk(start: str, module: str, path: list[str]) -> None:
        for imported in graph[module]:
            if imported == start:
                cycles.append(" -> ".join([*path, start]))
            elif imported not in path:
                walk(start, imported, [*path, imported])

    for name in graph:
        walk(name, name, [name])
    assert cycles == []
    assert graph["common"] == set()  # the shared helpers stand below every benchmark


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_benchmark_is_a_script_with_help(script):
    done = subprocess.run([sys.executable, str(MODULES[script]), "--help"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage: ") and f"{script}.py" in done.stdout.splitlines()[0]


def test_no_benchmark_imports_torch_to_answer_help():
    """``--help`` is answered without importing torch (the winograd experiment built its matrices at import and
    took a torch import, seconds on a busy machine, to say its usage): every script's, in one process."""
    program = ("import contextlib, io, runpy, sys\n"
               f"for name in {SCRIPTS!r}:\n"
               "    sys.argv = [name + '.py', '--help']\n"
               "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
               "        runpy.run_path(name + '.py', run_name='__main__')\n"
               "print(sorted(name for name in ('torch', 'restorecli.pipeline') if name in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120,
                          cwd=BENCHMARKS, env={**__import__("os").environ, "PYTHONPATH": str(BENCHMARKS)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == "[]"


def test_only_common_writes_the_performance_page():
    writers = [name for name, path in MODULES.items() if "PERFORMANCE.write_text" in path.read_text()
               or "performance.md\").write_text" in path.read_text()]
    assert writers == ["common"]


@pytest.fixture
def common(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import common

    page = tmp_path / "performance.md"
    page.write_text("# Performance\n\n<!-- a:start -->\nold a\n<!-- a:end -->\n\n<!-- b:start -->\nold b\n"
                    "<!-- b:end -->\n")
    monkeypatch.setattr(common, "PERFORMANCE", page)
    return common


def test_a_block_replaces_only_what_its_markers_hold(common, capsys):
    common.publish("new a\n| x |", *common.markers("a"), docs=True)
    assert common.PERFORMANCE.read_text() == ("# Performance\n\n<!-- a:start -->\nnew a\n| x |\n<!-- a:end -->\n\n"
                                              "<!-- b:start -->\nold b\n<!-- b:end -->\n")
    assert capsys.readouterr().out == "new a\n| x |\n"
    common.publish("printed only", *common.markers("b"), docs=False)
    assert "old b" in common.PERFORMANCE.read_text() and "printed only" not in common.PERFORMANCE.read_text()


def test_a_block_without_its_markers_is_refused_naming_them(common):
    before = common.PERFORMANCE.read_text()
    with pytest.raises(SystemExit, match="has no <!-- c:start --> ... <!-- c:end --> section"):
        common.write_block("text", *common.markers("c"))
    assert common.PERFORMANCE.read_text() == before


@pytest.mark.parametrize(("flags", "expected", "words"), [
    ("fpu sse2 avx avx2 fma amx_bf16 amx_tile avx512f avx512_bf16", "amx", "AMX"),
    ("fpu sse2 avx avx2 fma avx512f avx512_bf16", "avx512-bf16", "AVX-512 with BF16, no AMX"),
    ("fpu sse2 avx avx2 fma avx512f", "avx512", "AVX-512 without BF16"),
    ("fpu sse2 avx avx2 fma", "avx2", "AVX2 only, no AVX-512"),
])
def test_a_block_whose_figures_rank_by_the_cpu_goes_under_that_cpu_s_class(common, monkeypatch, flags, expected,
                                                                           words):
    from restorecli.engine import device

    monkeypatch.setattr(device, "cpu_info", lambda: {"model name": "AMD EPYC", "flags": flags})
    assert common.cpu_class() == expected
    assert common.class_markers("backends") == (f"<!-- backends-{expected}:start -->",
                                                f"<!-- backends-{expected}:end -->")
    assert common.machine().endswith(f"cores, {words}") and common.machine().startswith("AMD EPYC, ")


def test_a_cpu_of_none_of_the_classes_is_named_by_its_architecture(common, monkeypatch):
    import platform

    from restorecli.engine import device

    monkeypatch.setattr(device, "cpu_info", lambda: {"flags": "fp asimd"})
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert common.cpu_class() == "aarch64" and common.class_markers("video")[0] == "<!-- video-aarch64:start -->"


def test_the_performance_page_holds_a_block_for_each_class_measured():
    page = (BENCHMARKS.parent / "docs" / "performance.md").read_text()
    for name in ("backends", "video"):
        measured = sorted(set(re.findall(rf"<!-- {name}-([a-z0-9-]+):start -->", page)))
        assert {"avx2", "avx512-bf16"} <= set(measured), (name, measured)
        assert f"<!-- {name}:start -->" not in page


@pytest.fixture
def video_bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import video

    return video


def test_video_clip_is_the_asked_length_and_size_with_sound(video_bench, tmp_path):
    av = pytest.importorskip("av", reason="the video benchmark's clip is written with PyAV (restorecli[video])")
    clip = video_bench.make_clip(tmp_path / "clip.mp4", 0.25, 32)
    with av.open(str(clip)) as container:
        [stream], [sound] = container.streams.video, container.streams.audio
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
        assert (stream.width, stream.height, sound.codec_context.name) == (56, 32, "aac")
    assert len(frames) == 6  # a quarter of a second at 24 fps
    # the pan moves the picture: no two consecutive frames alike, and not by noise alone (sigma 2)
    assert video_bench.flicker(frames) > 3


def test_video_flicker_is_the_mean_difference_of_consecutive_frames(video_bench):
    import numpy as np

    frames = [np.full((4, 6, 3), value, np.uint8) for value in (10, 14, 14, 8)]
    frames[3][0, 0, 0] = 255  # one sample of the last pair's 72 off by 241, the other 71 by 6
    assert video_bench.flicker(frames) == pytest.approx((4 + 0 + (71 * 6 + 241) / 72) / 3)
    assert video_bench.flicker(frames[:1]) == 0.0
    enlarged = list(video_bench.bicubic(frames[:2], (12, 8)))
    assert enlarged[0].shape == (8, 12, 3) and video_bench.flicker(enlarged) == pytest.approx(4)
    assert video_bench.host_overhead(1.1, 1.0) == pytest.approx(0.1)


def test_thread_cpu_counts_a_busy_thread_under_its_name(common):
    import threading
    import time

    if not Path("/proc/self/task").is_dir():
        pytest.skip("ThreadCPU reads /proc/self/task, which only Linux has")

    burnt, done = threading.Event(), threading.Event()

    def burn() -> None:
        while time.thread_time() < 0.3:  # this thread's own CPU time
            pass
        burnt.set()
        done.wait()  # alive until the block's last reading

    busy = threading.Thread(target=burn, name="burner")
    with common.ThreadCPU(every=0.05) as cpu:
        busy.start()
        burnt.wait()
    done.set()
    busy.join()
    assert 0.25 <= cpu.seconds["burner"] <= 1.0  # /proc counts in clock ticks (10 ms)
    assert "benchmark-thread-cpu" not in cpu.seconds  # its own poller is left out
    assert cpu.labels[busy.native_id] == "burner"


def _cells(table: str, row: str) -> list[str]:
    """The cells of the table row that starts with ``row``."""
    [line] = [line for line in table.splitlines() if line.startswith(f"| {row}")]
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_video_table_holds_each_run_and_the_overhead_of_its_own_numbers(video_bench):
    """The fast sibling of the end-to-end run below: ``render`` on made-up runs, every figure checked."""
    workers = video_bench.WORKERS
    bare = {"seconds": 6.0, "frames": 6, "tiles": 1, "cpu": {"MainThread": 6.0, workers: 6.0}, "halves": (1.2, 0.8)}
    setup = {"model": "realesr-animevideov3", "backend": "torch", "device": "cpu", "precision": "fp32"}
    ours = {"video_s": 26.4, "frames": 24, "batch": 27.0, "load": 3.0, "codec": "libx264", "setup": setup,
            "cpu": {"MainThread": 24.0, workers: 24.0, "restorecli-video-read": 1.2}}
    peer = {"seconds": 12.0, "frames": 24, "cpu": {"MainThread": 20.0}}
    flicker_of = {"bicubic": 20.0, "restorecli": 22.0, "peer": 21.0}
    clip = {"width": 114, "height": 64, "seconds": 1, "out": "456x256"}
    out = video_bench.render(clip, bare, ours, peer, flicker_of, "python benchmarks/video.py --seconds 1", (1.0, 2.0))
    assert out.startswith("24 frames of 114x64 (1 s at 24 fps") and "`python benchmarks/video.py --seconds 1`" in out
    assert "torch on cpu in fp32" in out and "load average was 1.0 at the start and 2.0 at the end" in out
    assert _cells(out, "bare forward (torch, fp32)") == ["bare forward (torch, fp32)", "1.000", "1.0000", "-", "-"]
    assert _cells(out, "restorecli restore, model loaded")[1:] == ["0.909", "1.1000", "22.00", "1.10x"]
    assert _cells(out, "restorecli restore, whole")[1:] == ["0.800", "1.2500", "22.00", "1.10x"]
    assert _cells(out, "peer: realesrgan-ncnn-py")[1:] == ["2.000", "0.5000", "21.00", "1.05x"]
    assert _cells(out, "input enlarged with bicubic")[1:] == ["-", "-", "20.00", "1.00x"]
    assert "- 1 = 10.0% (the goal: under 10%)" in out and "/ the bare forward's 2.000 - 1 = 2.5%" in out
    assert "6 of the 24 frames (evenly spread)" in out and "1.2000 s and 0.8000 s a frame" in out
    assert _cells(out, "all threads")[1:] == ["2.000", "2.050", "0.833"]  # CPU seconds a frame per run
    assert _cells(out, "wall seconds a frame")[1:] == ["1.000", "1.100", "0.500"]
    assert "| peer:" not in video_bench.render(clip, bare, ours, None, flicker_of, "c", (1.0, 2.0))


def test_video_blocks_have_their_place_and_their_command_in_the_performance_page():
    text = (ROOT / "docs" / "performance.md").read_text()
    for cpu in ("avx2", "avx512-bf16"):
        start, end = f"<!-- video-{cpu}:start -->", f"<!-- video-{cpu}:end -->"
        assert text.count(start) == 1 and text.count(end) == 1
        assert text.index("## Video") < text.index(start) < text.index(end) < text.index("## Tile size on the CPU")
    assert "| `python benchmarks/video.py` |" in text  # in the Re-measuring table, with the blocks it writes


def test_video_bare_forward_runs_on_a_spread_sample_half_before_and_half_after(video_bench):
    before, after = video_bench.bare_sample(list(range(240)))
    assert before == list(range(0, 240, 8)) and after == list(range(4, 240, 8))
    assert video_bench.bare_sample([0, 1, 2]) == ([0, 2], [1])  # a clip too short to thin: every frame
    halves = video_bench.joined({"seconds": 3.0, "frames": 2, "tiles": 1, "cpu": {"a": 1.0}},
                                {"seconds": 3.0, "frames": 3, "tiles": 1, "cpu": {"a": 2.0, "b": 0.5}})
    assert (halves["seconds"], halves["frames"], halves["cpu"]) == (6.0, 5, {"a": 3.0, "b": 0.5})
    assert halves["halves"] == (1.5, 1.0)


@pytest.mark.slow  # about 15 s on a quiet 2-core machine (three runs over 24 frames, two processes importing torch)
def test_video_benchmark_runs_on_a_tiny_clip_and_prints_its_table(tmp_path):
    pytest.importorskip("av", reason="the video benchmark needs PyAV (restorecli[video])")
    done = subprocess.run([sys.executable, str(MODULES["video"]), "--seconds", "1", "--height", "64", "--backend",
                           "torch", "--precision", "fp32", "--no-docs"], capture_output=True, text=True, timeout=600,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "24 frames of 114x64 (1 s at 24 fps" in out and "to 456x256" in out and "torch on cpu in fp32" in out
    bare, ours = _cells(out, "bare forward (torch, fp32)"), _cells(out, "restorecli restore, model loaded")
    whole = _cells(out, "restorecli restore, whole")
    for row in (bare, ours, whole):
        assert float(row[1]) > 0 and float(row[1]) * float(row[2]) == pytest.approx(1, rel=0.01)  # fps, s a frame
    overhead = float(out.split("Host overhead: ")[1].split(" = ")[1].split("%")[0])
    assert overhead == pytest.approx(100 * (float(ours[2]) / float(bare[2]) - 1), abs=0.2)
    reference = float(_cells(out, "input enlarged with bicubic")[3])
    assert reference > 3  # the clip moves
    assert float(ours[3]) > 0 and float(ours[4].rstrip("x")) == pytest.approx(float(ours[3]) / reference, abs=0.01)
    try:
        import realesrgan_ncnn_py  # noqa: F401 - the peer's row is there where it imports
    except ImportError:
        assert "| peer:" not in out
    else:
        assert float(_cells(out, "peer: realesrgan-ncnn-py")[1]) > 0
    assert float(_cells(out, "all threads")[2]) > 0  # restorecli's CPU seconds a frame
    assert "The bare forward ran on 6 of the 24 frames (evenly spread)" in out
