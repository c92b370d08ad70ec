"""What a newcomer meets in the first minutes (issue 30): short help and version flags, usage errors of ``restore``
that answer before torch is imported, ``models`` printing its table once on a terminal, a JSON summary that gives
the batch's throughput, dry runs that size images as the run turns them, and shell completion of option values."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from helpers.cli import invoke
from test_cli_usage import COMMANDS, _probe
from test_terminal import CONTROL, run_on_a_terminal

@pytest.mark.parametrize("command", [[], *([name] for name in COMMANDS)])
def test_short_help_is_the_long_help(command):
    long = invoke(*command, "--help", prog_name="restorecli")
    short = invoke(*command, "-h", prog_name="restorecli")
    assert long.exit_code == short.exit_code == 0
    assert "Usage: restorecli" in long.stdout
    assert short.stdout == long.stdout


def test_short_version_is_the_long_version():
    long = invoke("--version", prog_name="restorecli")
    short = invoke("-V", prog_name="restorecli")
    assert long.exit_code == short.exit_code == 0
    assert re.fullmatch(r"restorecli \d+\.\d+\.\d+\S*\n", short.stdout)
    assert short.stdout == long.stdout


# The real entry point in a fresh interpreter: its exit code, and whether torch was imported by the time it ended.
_PROBE = """
import json, sys
from restorecli.cli.app import main
sys.argv = ["restorecli", *json.loads(sys.argv[1])]
try:
    main()
    code = 0
except SystemExit as stop:
    code = stop.code
print(json.dumps({"exit_code": code, "torch": "torch" in sys.modules,
                  "loaders": sorted(m for m in ("restorecli.models.loading", "restorecli.jobs.store")
                                    if m in sys.modules)}))
"""


@pytest.mark.parametrize("args, message", [
    (["restore", "missing.png"], "no input matched: missing.png"),
    (["restore", "missing.png", "also-missing/"], "no input matched: missing.png also-missing/"),
    (["restore", "a:smile:.png"], "no input matched: a:smile:.png"),  # a name as it is, not an emoji
    (["restore", "{photo}", "--tile", "abc"], "--tile 'abc' is not auto, 0 or a positive number of pixels"),
    (["restore", "{photo}", "--precision", "fp8"], "--precision 'fp8' is not one of auto, fp32, fp16, bf16"),
    (["restore", "{photo}", "--format", "bmp"], "--format 'bmp' is not one of"),
    (["restore", "{photo}", "--outscale", "-1"], "Invalid value for '--outscale'"),
])
def test_a_usage_error_of_restore_answers_before_torch_is_imported(args, message, tmp_path):
    """Issue 30: a usage error took 2.7 s, nearly all of it importing torch. Checked by what was imported, not by
    the clock: a wall-clock bound would fail on a loaded machine."""
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"not read: the usage error comes first")
    argv = [arg.format(photo=photo) for arg in args]
    done = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(argv)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout.splitlines()[-1])
    # nor the queue's modules, nor the weights' loaders: what a usage error costs is Python, typer (which brings
    # pydantic) and rich, then restorecli's own checks
    assert outcome == {"exit_code": 2, "torch": False, "loaders": []}, done.stderr
    assert message in " ".join(done.stderr.split())


def _model_names(text: str) -> list[str]:
    return re.findall(r"realesrgan-x4plus-anime", text)


def test_models_on_a_terminal_prints_its_table_once(tmp_path):
    """Issue 30: with stdout and stderr on one terminal, the table was followed by the same list again as TSV."""
    code, received, _ = run_on_a_terminal(["models", "--weights-dir", str(tmp_path / "w")], tmp_path)
    shown = CONTROL.sub(b"", received).decode(errors="replace")
    assert code == 0, shown
    assert "status" in shown and "description" in shown  # the table's header
    assert len(_model_names(shown)) == 1, shown
    assert "\t" not in shown


def test_models_piped_still_gives_its_tsv_on_stdout(tmp_path):
    code, received, piped = run_on_a_terminal(["models", "--weights-dir", str(tmp_path / "w")], tmp_path,
                                              stdout_to_pipe=True)
    assert code == 0, received
    rows = [line.split("\t") for line in piped.decode().splitlines()]
    assert "realesrgan-x4plus-anime" in [row[0] for row in rows if len(row) == 3]  # name, status, path
    assert len(_model_names(CONTROL.sub(b"", received).decode(errors="replace"))) == 1  # the table, on the terminal


def test_models_names_the_extra_a_licensed_model_needs_whole(tmp_path):
    """Its note was read as markup, so ``pip install 'restorecli[codeformer]'`` lost its extra."""
    listed = invoke("models", "--weights-dir", tmp_path / "w")
    assert listed.exit_code == 0, listed.stderr
    assert "it needs pip install 'restorecli[codeformer]'" in " ".join(listed.stderr.split())


def test_the_json_summary_gives_wall_time_and_images_per_second(tmp_path, make_model):
    from conftest import TEST_INPUTS

    args = ["restore", str(TEST_INPUTS / "rocket.jpg"), str(TEST_INPUTS / "cameraman_gray.png"), "-o",
            str(tmp_path / "out"), "--model", str(make_model(2)), "--device", "cpu", "--precision", "fp32", "--json"]
    first = invoke(*args, prog_name="restorecli")
    assert first.exit_code == 0, first.stderr
    summary = json.loads(first.stdout.splitlines()[-1])
    assert summary["type"] == "summary" and summary["ok"] == 2 and summary["seconds"] > 0
    assert summary["images_per_second"] == round(2 / summary["seconds"], 3)
    again = invoke(*args, prog_name="restorecli")  # every output exists: nothing restored, no rate
    summary = json.loads(again.stdout.splitlines()[-1])
    assert again.exit_code == 0 and summary["skipped"] == 2 and "images_per_second" not in summary


@pytest.mark.parametrize("orientation, upright", [(1, (96, 64)), (6, (64, 96)), (8, (64, 96)), (3, (96, 64))])
def test_a_dry_run_reports_sizes_after_exif_orientation(tmp_path, orientation, upright):
    """Issue 30: the dry run gave the stored size of a phone photo taken upright while the real run, which turns
    the pixels by their EXIF orientation, wrote the turned one."""
    from PIL import Image

    photo = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.new("RGB", (96, 64), "teal").save(photo, exif=exif)
    done = invoke("restore", photo, "-o", tmp_path / "out", "--dry-run", "--json", prog_name="restorecli")
    assert done.exit_code == 0, done.stderr
    item = json.loads(done.stdout.splitlines()[0])
    assert item["status"] == "planned"
    assert item["in_size"] == list(upright)
    assert item["out_size"] == [4 * upright[0], 4 * upright[1]]  # the default model's scale, known from the registry
    shown = invoke("restore", photo, "-o", tmp_path / "out", "--dry-run", prog_name="restorecli")
    assert f"({upright[0]}x{upright[1]} -> {4 * upright[0]}x{4 * upright[1]})" in " ".join(shown.stderr.split())


@pytest.mark.parametrize("words, offered", [
    ("restorecli restore --format ", {"same", "png", "jpg", "webp", "tiff"}),
    ("restorecli restore --precision ", {"auto", "fp32", "fp16", "bf16"}),
    ("restorecli restore --precision f", {"fp32", "fp16"}),
    ("restorecli restore --model realesrgan-x", {"realesrgan-x4plus", "realesrgan-x2plus", "realesrgan-x4plus-anime"}),
    ("restorecli submit --face-model gfpgan", {"gfpgan-1.3", "gfpgan-1.4"}),
    ("restorecli serve --face-detector ", {"retinaface-resnet50", "retinaface-mobilenet0.25"}),
    # evaluate's list: the name after the last comma, those before it kept
    ("restorecli evaluate --models realesrgan-x4plus,realesr-general",
     {"realesrgan-x4plus,realesr-general-x4v3", "realesrgan-x4plus,realesr-general-wdn-x4v3"}),
])
def test_shell_completion_offers_option_values(words, offered):
    """Issue 30: TAB completed commands and flags, but no value: not the formats, precisions or model names."""
    typed = words.split()
    found = _probe([], env={"_RESTORECLI_COMPLETE": "complete_bash", "COMP_WORDS": words,
                            "COMP_CWORD": str(len(typed) if words.endswith(" ") else len(typed) - 1)})
    assert set(found["stdout"].split()) == offered
    assert found["heavy"] == []  # each TAB runs the program: still no torch, no OpenCV


def test_shell_completion_offers_the_devices_the_help_names():
    found = _probe([], env={"_RESTORECLI_COMPLETE": "complete_bash", "COMP_WORDS": "restorecli restore --device ",
                            "COMP_CWORD": "3"})
    assert {"auto", "cpu", "cuda", "mps"} <= set(found["stdout"].split())


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_download_weights_from_a_file_of_another_architecture_is_refused_naming_both(tmp_path, make_model, fmt):
    """Issue 30: an x4plus (RRDBNet) file was accepted and pinned as realesr-general-x4v3 (SRVGGNetCompact, the
    same scale) as .safetensors, and refused as .pth only by its sha256, with a message about the hash."""
    weights = tmp_path / "weights"
    rrdb = make_model(4, "rrdb", fmt)
    done = invoke("download-weights", "--from", rrdb, "--name", "realesr-general-x4v3", "--weights-dir", weights,
                  prog_name="restorecli")
    message = " ".join(done.stderr.split())
    assert done.exit_code == 3, message
    assert "is a RRDBNet model (4x), but 'realesr-general-x4v3' is a SRVGGNetCompact model (4x)" in message
    assert "sha256" not in message
    assert not weights.exists() or not any(weights.iterdir())  # nothing installed, nothing pinned
    compact = make_model(4, "compact", "safetensors")  # the right architecture and scale: imported
    done = invoke("download-weights", "--from", compact, "--name", "realesr-general-x4v3", "--weights-dir", weights,
                  prog_name="restorecli")
    assert done.exit_code == 0, done.stderr
    assert (weights / "realesr-general-x4v3.safetensors").read_bytes() == compact.read_bytes()


def test_download_weights_from_a_file_of_another_scale_is_refused_naming_both(tmp_path, make_model):
    """The right architecture at another scale: refused naming the file, its scale, the name and the scale the
    name's entry has; nothing installed."""
    weights = tmp_path / "weights"
    two_x = make_model(2, "compact", "safetensors")
    done = invoke("download-weights", "--from", two_x, "--name", "realesr-general-x4v3", "--weights-dir", weights,
                  prog_name="restorecli")
    message = " ".join(done.stderr.split())
    assert done.exit_code == 3, message
    assert (f"{two_x}: is a 2x model, expected 4x for 'realesr-general-x4v3' (a SRVGGNetCompact model): these are "
            "not its weights") in message
    assert not weights.exists() or not any(weights.iterdir())


def test_evaluate_states_the_settings_it_ran_with(tmp_path, make_model):
    """Issue 30: an evaluate report did not say what produced it (model, scale, precision, tile, device, faces,
    version), so two reports could not be told apart."""
    from importlib.metadata import version

    from conftest import TEST_INPUTS

    model = make_model(2)
    done = invoke("evaluate", TEST_INPUTS / "cameraman_gray.png", "--models", model, "--scale", "2", "--seed", "7",
                  "--tile", "64", "--device", "cpu", "--precision", "fp32", "--json", "--report", tmp_path / "report",
                  prog_name="restorecli")
    assert done.exit_code == 0, done.stderr
    summary = json.loads(done.stdout.splitlines()[-1])
    settings = summary["settings"]
    assert {key: settings[key] for key in ("mode", "degrade", "scale", "seed", "tile", "device", "precision",
                                           "face_enhance", "version")} == {
        "mode": "synthetic", "degrade": "bicubic", "scale": 2, "seed": 7, "tile": 64, "device": "cpu",
        "precision": "fp32", "face_enhance": False, "version": version("restorecli")}
    ran = settings["models"][model.stem]  # what the model ran as (Restorer.setup), as restore's summary names it
    assert (ran["model"], ran["device"], ran["precision"]) == (model.stem, "cpu", "fp32")
    page = (tmp_path / "report" / "index.html").read_text()
    header = page[page.index("<h1>"):page.index("<table")]
    for shown in ("synthetic", "bicubic", "seed", "tile", "64", "fp32", "cpu", version("restorecli"), model.stem):
        assert shown in header, shown
    assert "tile 64" in " ".join(done.stderr.split()) and f"{model.stem} on cpu, fp32" in " ".join(done.stderr.split())
