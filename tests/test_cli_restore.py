"""`restorecli restore` through the CLI: outputs, JSON, exit codes, bad inputs, resume, streams, safety."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TEST_INPUTS, grey_tiff, read_rgb
from helpers.cli import invoke, json_lines
from helpers.wait import wait_until


def writing(process, pattern: str):
    """A condition for wait_until: a temporary file matching ``pattern`` exists, and ``process`` must not have
    ended before (then the image it should be writing never started)."""

    def started() -> bool:
        if list(pattern.parent.glob(pattern.name)):
            return True
        assert process.poll() is None, "the large image never started"
        return False

    return started


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    shutil.copytree(TEST_INPUTS, folder, ignore=shutil.ignore_patterns("*.py", "*.md"))
    return folder


def test_restore_a_folder_keeps_depth_grey_and_alpha(photos, model2, tmp_path):
    out = tmp_path / "out"
    result = invoke("restore", photos, "-o", out, "--model", model2, "--json")
    assert result.exit_code == 0, result.stderr
    lines = json_lines(result)
    items = [line for line in lines if line["type"] == "item"]
    assert len(items) == 5 and all(i["status"] == "ok" for i in items)
    summary = {"type": "summary", "ok": 5, "skipped": 0, "errors": 0, "seconds": lines[-1]["seconds"],
               "images_per_second": round(5 / lines[-1]["seconds"], 3),
               "model": Path(model2).stem, "device": "cpu", "precision": lines[-1]["precision"], "backend": "torch"}
    assert lines[-1]["precision"] in ("fp32", "bf16")  # auto: bf16 only where this CPU runs it faster
    if lines[-1]["precision"] == "bf16":
        summary["precision_16bit"] = "fp32"  # chelsea_16bit.png
    assert lines[-1] == summary
    for item in items:
        w, h = item["in_size"]
        assert item["out_size"] == [2 * w, 2 * h]
        assert Path(item["output"]).is_file()
    grey = read_rgb(out / "cameraman_gray.png")
    assert grey.shape == (256, 256)
    alpha = read_rgb(out / "coffee_alpha.png")
    assert alpha.shape == (170, 256, 4) and alpha[..., 3].min() < 10 and alpha[..., 3].max() > 245
    sixteen = read_rgb(out / "chelsea_16bit.png")
    assert sixteen.dtype == np.uint16 and sixteen.shape == (160, 240, 3)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in photos.iterdir())
    assert "restorecli restore" in result.stderr  # the summary table goes to stderr


def test_plain_stdout_lists_only_written_files(photos, model2, tmp_path):
    result = invoke("restore", photos / "rocket.jpg", "-o", tmp_path / "o", "--model", model2)
    assert result.exit_code == 0
    assert result.stdout.strip() == str(tmp_path / "o" / "rocket.jpg")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_summary_says_what_ran(photos, model2, tmp_path, precision):
    result = invoke("restore", photos / "rocket.jpg", "-o", tmp_path / "o", "--model", model2, "--json",
                    "--precision", precision)
    assert result.exit_code == 0, result.stderr
    summary = json_lines(result)[-1]
    assert (summary["model"], summary["device"], summary["precision"]) == (Path(model2).stem, "cpu", precision)
    plain = invoke("restore", photos / "rocket.jpg", "-o", tmp_path / "p", "--model", model2,
                   "--precision", precision)
    assert f"{Path(model2).stem} on cpu, {precision}" in plain.stderr


def test_auto_precision_makes_the_same_choice_in_every_run_on_a_machine(photos, model2, tmp_path, monkeypatch):
    """The first run's probe is recorded: a later run whose own timing would read otherwise (a loaded machine)
    still runs what the first did."""
    from restorecli.engine import device

    readings = iter([2.0, 1.0])  # bf16 twice as fast, then (under load, say) no faster
    monkeypatch.setattr(device, "_measure_bf16_speedup", lambda: next(readings))
    chosen = []
    try:
        for out in ("first", "second"):
            device.cpu_bf16_speedup.cache_clear()  # each run is a new process
            result = invoke("restore", photos / "rocket.jpg", "-o", tmp_path / out, "--model", model2, "--json")
            assert result.exit_code == 0, result.stderr
            chosen.append(json_lines(result)[-1]["precision"])
    finally:
        device.cpu_bf16_speedup.cache_clear()
    assert chosen == ["bf16", "bf16"]


def test_auto_bf16_leaves_16_bit_images_in_fp32(photos, model2, tmp_path, monkeypatch):
    monkeypatch.setattr("restorecli.engine.device.cpu_has_fast_bf16", lambda: True)  # a CPU where bf16 is faster
    images = [photos / "chelsea_16bit.png", photos / "rocket.jpg"]
    result = invoke("restore", *images, "-o", tmp_path / "auto", "--model", model2, "--json")
    assert result.exit_code == 0, result.stderr
    summary = json_lines(result)[-1]
    assert (summary["precision"], summary["precision_16bit"]) == ("bf16", "fp32")
    for precision in ("fp32", "bf16"):
        pinned = invoke("restore", *images, "-o", tmp_path / precision, "--model", model2, "--precision", precision)
        assert pinned.exit_code == 0, pinned.stderr
    sixteen = read_rgb(tmp_path / "auto" / "chelsea_16bit.png")
    assert sixteen.dtype == np.uint16
    assert np.array_equal(sixteen, read_rgb(tmp_path / "fp32" / "chelsea_16bit.png"))
    assert not np.array_equal(sixteen, read_rgb(tmp_path / "bf16" / "chelsea_16bit.png"))
    assert np.array_equal(read_rgb(tmp_path / "auto" / "rocket.jpg"), read_rgb(tmp_path / "bf16" / "rocket.jpg"))
    plain = invoke("restore", photos / "chelsea_16bit.png", "-o", tmp_path / "plain", "--model", model2)
    assert "bf16 (16-bit images: fp32)" in plain.stderr
    # written as 8-bit JPEG, a 16-bit input gains nothing from fp32: it runs in bf16, with no second model
    for precision in ("auto", "bf16"):
        jpeg = invoke("restore", photos / "chelsea_16bit.png", "-o", tmp_path / f"jpg-{precision}", "--model", model2,
                      "--format", "jpg", "--precision", precision, "--json")
        assert jpeg.exit_code == 0 and "precision_16bit" not in json_lines(jpeg)[-1], jpeg.stderr
    assert ((tmp_path / "jpg-auto" / "chelsea_16bit.jpg").read_bytes()
            == (tmp_path / "jpg-bf16" / "chelsea_16bit.jpg").read_bytes())


def test_restorer_runs_16_bit_arrays_on_an_fp32_copy_loaded_when_first_needed(model2, monkeypatch):
    from restorecli.pipeline import RestoreOptions, Restorer

    monkeypatch.setattr("restorecli.engine.device.cpu_has_fast_bf16", lambda: True)
    auto = Restorer.from_options(RestoreOptions(model=str(model2)))
    fp32 = Restorer.from_options(RestoreOptions(model=str(model2), precision="fp32"))
    bf16 = Restorer.from_options(RestoreOptions(model=str(model2), precision="bf16"))
    eight = read_rgb(TEST_INPUTS / "rocket.jpg")[:48, :64]
    assert np.array_equal(auto.restore_array(eight), bf16.restore_array(eight))
    assert "precision_16bit" not in auto.setup  # no 16-bit image yet: no second copy loaded
    sixteen = read_rgb(TEST_INPUTS / "chelsea_16bit.png")[:48, :64]
    assert np.array_equal(auto.restore_array(sixteen), fp32.restore_array(sixteen))
    assert auto.setup["precision_16bit"] == "fp32" and auto.setup["precision"] == "bf16"
    assert "precision_16bit" not in bf16.setup and not np.array_equal(bf16.restore_array(sixteen),
                                                                       fp32.restore_array(sixteen))


def test_rerun_skips_existing_outputs_and_overwrite_redoes_them(photos, model2, tmp_path):
    args = ["restore", photos / "rocket.jpg", photos / "cameraman_gray.png", "-o", tmp_path / "o", "--model", model2,
            "--json"]
    assert invoke(*args).exit_code == 0
    again = invoke(*args)
    assert again.exit_code == 0
    assert [i["status"] for i in json_lines(again) if i["type"] == "item"] == ["skipped", "skipped"]
    redo = invoke(*args, "--overwrite")
    assert [i["status"] for i in json_lines(redo) if i["type"] == "item"] == ["ok", "ok"]


def test_bad_inputs_are_reported_and_the_batch_goes_on(photos, model2, tmp_path):
    (photos / "empty.png").write_bytes(b"")
    (photos / "text.jpg").write_text("just text")
    data = (photos / "rocket.jpg").read_bytes()
    (photos / "cut.jpg").write_bytes(data[: len(data) // 2])
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in photos.iterdir()}
    out = tmp_path / "o"
    result = invoke("restore", photos, photos / "missing.png", "-o", out, "--model", model2, "--json")
    assert result.exit_code == 1
    items = {Path(i["input"]).name: i for i in json_lines(result) if i["type"] == "item"}
    assert items["empty.png"]["error"].endswith("empty.png: empty file")
    assert "text.jpg: not an image" in items["text.jpg"]["error"]
    assert "cut.jpg: truncated or corrupt" in items["cut.jpg"]["error"]
    assert "missing.png: no such file" in items["missing.png"]["error"]
    assert sum(i["status"] == "ok" for i in items.values()) == 5
    for name in ("empty.png", "text.jpg", "cut.jpg"):
        assert name in result.stderr and not (out / name).exists()
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in photos.iterdir()}
    assert after == before  # inputs are never modified
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_a_multi_page_file_is_an_error_for_that_file_and_the_batch_goes_on(photos, model2, tmp_path):
    """A file of several pictures that is no animation (an animated GIF, PNG or WebP is restored frame by frame:
    test_animated) is refused rather than cut to its first picture."""
    frames = [Image.new("RGB", (24, 16), (60 * i, 90, 20)) for i in range(2)]
    pages = tmp_path / "scan.tif"
    frames[0].save(pages, save_all=True, append_images=frames[1:])
    result = invoke("restore", pages, photos / "rocket.jpg", "-o", tmp_path / "o", "--model", model2, "--json")
    assert result.exit_code == 1
    failed, done = json_lines(result)[:2]
    assert failed["status"] == "error" and "holds 2 pictures (an animation or a multi-page file)" in failed["error"]
    assert done["status"] == "ok" and sorted(p.name for p in (tmp_path / "o").iterdir()) == ["rocket.jpg"]


def test_pixel_limit_is_configurable(photos, model2, tmp_path):
    result = invoke("restore", photos / "rocket.jpg", "-o", tmp_path / "o", "--model", model2, "--max-pixels", 100)
    assert result.exit_code == 1
    assert "exceeds the limit of 100" in result.stderr


def test_a_tiff_claiming_2_31_pixels_gets_the_max_pixels_error_in_a_run_and_a_dry_run(photos, model2, tmp_path):
    huge = tmp_path / "huge.tif"
    huge.write_bytes(grey_tiff(65536, 32768, b"\x80" * 16))
    expected = f"{huge}: 65536x32768 = 2,147,483,648 pixels exceeds the limit of 100,000,000 (raise it with --max-pixels)"
    for dry_run in ([], ["--dry-run"]):
        result = invoke("restore", huge, photos / "rocket.jpg", "-o", tmp_path / f"o{len(dry_run)}", "--model",
                        model2, "--json", *dry_run)
        assert result.exit_code == 1
        failed, done = json_lines(result)[:2]
        assert (failed["status"], failed["error"]) == ("error", expected)
        assert done["status"] == ("planned" if dry_run else "ok")
        assert "Decompression" not in result.stderr and expected in result.stderr


def test_an_input_s_warnings_are_one_line_each_naming_it(model2, tmp_path):
    """Python would print Pillow's warning once, with Pillow's source path and line."""
    tagged = grey_tiff(16, 12, bytes(range(192)), extra=((305, 2, 10**6, 8),))  # a tag past the file's end
    for name in ("a.tif", "b.tif"):
        (tmp_path / name).write_bytes(tagged)
    with warnings.catch_warnings(record=True) as left_to_python:
        warnings.simplefilter("always")
        result = invoke("restore", tmp_path / "a.tif", tmp_path / "b.tif", "-o", tmp_path / "o", "--model", model2)
    assert result.exit_code == 0, result.stderr
    assert [line for line in result.stderr.splitlines() if "Tag data" in line] == [
        f"warning: {tmp_path / name}: Tag data larger than file. Skipping tag 305" for name in ("a.tif", "b.tif")]
    assert "site-packages" not in result.stderr and "UserWarning" not in result.stderr and left_to_python == []
    assert result.stdout.splitlines() == [str(tmp_path / "o" / name) for name in ("a.tif", "b.tif")]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--tile", "big"], "--tile 'big'"),
        (["--quality", "0"], "quality"),
        (["--format", "gif"], "format"),
        (["--outscale", "-1"], "outscale"),
    ],
)
def test_usage_errors_exit_2(photos, model2, args, message):
    result = invoke("restore", photos / "rocket.jpg", "--model", model2, *args)
    assert result.exit_code == 2
    assert message in result.stderr


def test_help_shows_defaults_written_in_brackets():
    """Help text is shown as written: rich markup used to swallow "[default: ...]" as a tag."""
    for command, default in (("restore", "[default: the"), ("submit", "[default: $RESTORECLI_QUEUE"),
                             ("status", "[default: the whole queue]"), ("download-weights", "[default: what")):
        result = invoke(command, "--help")
        assert result.exit_code == 0 and default in " ".join(result.stdout.split()), (command, result.stdout)


def test_no_input_matched_exits_2(tmp_path, model2):
    result = invoke("restore", tmp_path / "nothing-*.jpg", "--model", model2)
    assert result.exit_code == 2
    assert "no input matched" in result.stderr


def test_unknown_model_exits_3_and_says_what_to_do(photos):
    result = invoke("restore", photos / "rocket.jpg", "--model", "realesr-general-x4v3")
    assert result.exit_code == 3
    assert "realesr-general-x4v3.pth" in result.stderr and "download" in result.stderr
    assert result.stdout == ""


def test_a_torchscript_model_is_refused_without_torch_s_advice_to_load_it_unsafely(photos, tmp_path):
    script = tmp_path / "compiled.pth"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated, not gone
        torch.jit.script(torch.nn.Conv2d(3, 3, 3)).save(str(script))
    result = invoke("restore", photos / "rocket.jpg", "-o", tmp_path / "o", "--model", script)
    assert result.exit_code == 3 and result.stdout == ""
    assert f"error: {script}: is a TorchScript archive (a compiled program with its weights)" in result.stderr
    assert "weights_only" not in result.stderr and "warning" not in result.stderr


def test_unavailable_device_exits_3(photos, model2):
    result = invoke("restore", photos / "rocket.jpg", "--model", model2, "--device", "cuda:3")
    assert result.exit_code == 3
    assert "cuda:3" in result.stderr


def test_recursive_keeps_the_tree_and_ignores_its_own_output(photos, model2):
    (photos / "sub" / "deeper").mkdir(parents=True)
    shutil.copy(photos / "rocket.jpg", photos / "sub" / "deeper" / "r2.jpg")
    out = photos / "restored"  # inside the input tree: a re-run must not restore its own results
    first = invoke("restore", photos, "-o", out, "--recursive", "--model", model2, "--json")
    assert first.exit_code == 0
    assert (out / "sub" / "deeper" / "r2.jpg").is_file()
    second = invoke("restore", photos, "-o", out, "--recursive", "--model", model2, "--json")
    items = [i for i in json_lines(second) if i["type"] == "item"]
    assert len(items) == 6 and all(i["status"] == "skipped" for i in items)


@pytest.mark.parametrize("second", ["x.jpg", "X.JPG"])  # one file on macOS's and Windows' file systems too
def test_flat_inputs_with_the_same_name_do_not_clobber(tmp_path, model2, second):
    for folder, name in (("a", "x.jpg"), ("b", second)):
        (tmp_path / folder).mkdir()
        shutil.copy(TEST_INPUTS / "rocket.jpg", tmp_path / folder / name)
    result = invoke("restore", tmp_path / "a" / "x.jpg", tmp_path / "b" / second, "-o", tmp_path / "o",
                    "--model", model2, "--json")
    assert result.exit_code == 1
    items = [i for i in json_lines(result) if i["type"] == "item"]
    assert items[0]["status"] == "ok" and "collides with that of" in items[1]["error"]
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["x.jpg"]


def test_the_same_file_named_twice_is_restored_once(photos, model2, tmp_path):
    """Overlapping globs or a folder beside a file in it name one file twice: it is restored once and the
    repeat is skipped, saying so; the batch succeeds. A hard link under another name has an output of its own."""
    (photos / "link.jpg").hardlink_to(photos / "rocket.jpg")
    out = tmp_path / "o"
    result = invoke("restore", photos / "rocket.jpg", photos / ".." / "photos" / "rocket.jpg", photos, "-o", out,
                    "--model", model2, "--json")
    assert result.exit_code == 0, result.stderr
    items = [i for i in json_lines(result) if i["type"] == "item"]
    rocket = [i for i in items if Path(i["input"]).name == "rocket.jpg"]
    assert [i["status"] for i in rocket] == ["ok", "skipped", "skipped"]
    assert all(i["error"] == f"the same file as the earlier input {photos / 'rocket.jpg'}" for i in rocket[1:])
    assert {Path(i["input"]).name: i["status"] for i in items}["link.jpg"] == "ok"  # its own output name
    assert json_lines(result)[-1]["ok"] == 6 and json_lines(result)[-1]["skipped"] == 2


@pytest.mark.parametrize("flags", [(), ("--overwrite",), ("--dry-run", "--overwrite")])
def test_an_output_that_is_its_own_input_is_an_error_and_the_input_is_kept(photos, model2, flags):
    """Writing into the input's own folder with no --suffix names the input itself: with --overwrite that
    replaced the photo, and without it the image was reported as done ("output exists"). The same file under
    another spelling counts too: on macOS's and Windows' file systems a.JPG and the a.jpg written for it are
    one file, played here by a second (hard) link."""
    shutil.copy(photos / "rocket.jpg", photos / "b.JPG")
    (photos / "b.jpg").hardlink_to(photos / "b.JPG")
    before = {p.name: p.read_bytes() for p in photos.iterdir()}
    result = invoke("restore", photos / "rocket.jpg", photos / "b.JPG", "-o", photos, "--model", model2, "--json",
                    *flags)
    assert result.exit_code == 1, result.stderr
    items = [i for i in json_lines(result) if i["type"] == "item"]
    assert [i["status"] for i in items] == ["error", "error"]
    assert f"output {photos / 'rocket.jpg'} is the input itself, which is never overwritten" in items[0]["error"]
    assert f"output {photos / 'b.jpg'} is the input itself" in items[1]["error"]
    assert "--suffix" in result.stderr
    assert {p.name: p.read_bytes() for p in photos.iterdir()} == before


def test_an_output_that_is_another_input_of_the_batch_is_an_error(photos, model2):
    shutil.copy(photos / "rocket.jpg", photos / "rocket_x.jpg")  # say, a result of an earlier run
    kept = (photos / "rocket_x.jpg").read_bytes()
    result = invoke("restore", photos / "rocket.jpg", photos / "rocket_x.jpg", "-o", photos, "--suffix", "_x",
                    "--overwrite", "--model", model2, "--json")
    assert result.exit_code == 1, result.stderr
    first, second = [i for i in json_lines(result) if i["type"] == "item"]
    assert first["status"] == "error" and f"is the input {photos / 'rocket_x.jpg'}" in first["error"]
    assert second["status"] == "ok" and second["output"] == str(photos / "rocket_x_x.jpg")
    assert (photos / "rocket_x.jpg").read_bytes() == kept


def test_a_folder_that_is_its_own_output_says_why_nothing_matched(photos, model2):
    result = invoke("restore", photos, "-o", photos, "--model", model2)
    assert result.exit_code == 2
    assert "no input matched" in result.stderr and "lie in the output folder" in result.stderr
    assert "another folder" in result.stderr


def test_a_full_disk_ends_the_batch_and_a_rerun_resumes(photos, model2, tmp_path, disk_fills):
    """Out of space (or quota, or a read-only file system) every later image would fail the same way after
    its model time: the batch stops at the first, says why and how far it got, and leaves no temporary file."""
    out = tmp_path / "out"
    disk_fills(2)
    result = invoke("restore", photos, "-o", out, "--model", model2, "--json")
    assert result.exit_code == 1
    lines = json_lines(result)
    items = [i for i in lines if i["type"] == "item"]
    assert [i["status"] for i in items] == ["ok", "error"]
    assert "No space left on device" in items[1]["error"]
    assert lines[-1]["halted"].startswith("No space left on device")
    assert "stopped after 2 of 5 images" in result.stderr and "run the same command again" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == [Path(items[0]["output"]).name]  # no temporary file
    disk_fills(None)
    again = invoke("restore", photos, "-o", out, "--model", model2, "--json")
    assert again.exit_code == 0
    assert [i["status"] for i in json_lines(again) if i["type"] == "item"] == ["skipped"] + ["ok"] * 4


def test_file_names_with_brackets_are_shown_as_they_are(model2, tmp_path):
    """rich reads "[old]" as a style tag: error lines named "bad .jpg" for "bad [old].jpg"."""
    folder = tmp_path / "scans [1998]"
    folder.mkdir()
    (folder / "bad [old].jpg").write_bytes(b"not an image")
    shutil.copy(TEST_INPUTS / "rocket.jpg", folder / "IMG [edit].jpg")
    result = invoke("restore", folder, "-o", tmp_path / "out [x]", "--model", model2)
    assert result.exit_code == 1
    assert f"{folder / 'bad [old].jpg'}: not an image" in result.stderr
    assert result.stdout.strip() == str(tmp_path / "out [x]" / "IMG [edit].jpg")
    missing = invoke("restore", tmp_path / "[none]*.jpg", "--model", model2)
    assert missing.exit_code == 2 and "[none]*.jpg" in missing.stderr


@pytest.mark.parametrize("name,shown", [  # as GNU ls --quoting-style=shell-escape shows them (coreutils 9.1)
    (b"a\nb.png", "'a'$'\\n''b.png'"), (b"\nb", "''$'\\n''b'"), (b"b\n", "'b'$'\\n'"),
    (b"a\tb\x01c", "'a'$'\\t''b'$'\\001''c'"), (b"it's\nx", "'it'\\''s'$'\\n''x'"), (b"x\x7fy", "'x'$'\\177''y'"),
    ("caf\u00e9\n.png".encode(), "'caf\u00e9'$'\\n''.png'"), (b"bad\xff\n", "'bad'$'\\377\\n'"),
    (b"\x1b[31m", "''$'\\033''[31m'"), (b"a b [x] it's.png", "a b [x] it's.png")])
def test_names_with_control_characters_are_quoted_as_ls_quotes_them_and_read_back_by_a_shell(name, shown):
    import os
    import subprocess

    from restorecli.cli.render import shell_quoted

    assert shell_quoted(os.fsdecode(name)) == shown
    if shown != os.fsdecode(name):  # quoted: a shell reads it back as the very name
        echoed = subprocess.run(["bash", "-c", f"printf %s {shown}"], capture_output=True, check=True)
        assert echoed.stdout == name


def test_an_output_name_with_a_newline_is_one_quoted_line_on_plain_stdout_and_raw_in_json(model2, tmp_path):
    import os

    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("two\nlines.jpg", "plain name.jpg"):
        shutil.copy(TEST_INPUTS / "rocket.jpg", folder / name)
    out = tmp_path / "out"
    plain = invoke("restore", folder, "-o", out, "--model", model2, "--dry-run")
    assert plain.exit_code == 0, plain.stderr
    quoted = f"'{out}/two'$'\\n''lines.jpg'"
    assert plain.stdout.splitlines() == [f"{out / 'plain name.jpg'}", quoted]
    assert f"would write {quoted} (96x64)\n" in plain.stderr
    done = invoke("restore", folder, "-o", out, "--model", model2)
    assert done.exit_code == 0 and done.stdout == plain.stdout
    assert os.path.isfile(out / "two\nlines.jpg")
    as_json = invoke("restore", folder, "-o", out, "--model", model2, "--json", "--overwrite")
    assert [item["output"] for item in json_lines(as_json) if item["type"] == "item"] == [
        str(out / "plain name.jpg"), str(out / "two\nlines.jpg")]


def test_a_file_name_near_the_length_limit_is_restored(model2, tmp_path):
    """Its temporary file's name, which adds the writer's process and host, used to pass 255 bytes and fail."""
    source = tmp_path / ("a" * 240 + ".jpg")
    shutil.copy(TEST_INPUTS / "rocket.jpg", source)
    result = invoke("restore", source, "-o", tmp_path / "out", "--model", model2, "--json")
    assert result.exit_code == 0, result.stderr
    assert [p.name for p in (tmp_path / "out").iterdir()] == [source.name]


def test_formats_pillow_cannot_read_are_named_and_other_spellings_are_found(model2, tmp_path):
    folder = tmp_path / "phone"
    folder.mkdir()
    (folder / "IMG_0001.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64))
    (folder / "photo.jxl").write_bytes(b"\xff\x0a" + bytes(64))
    Image.open(TEST_INPUTS / "rocket.jpg").save(folder / "scan.jfif", "JPEG")
    Image.open(TEST_INPUTS / "rocket.jpg").save(folder / "web.avif")
    result = invoke("restore", folder, "-o", tmp_path / "out", "--model", model2, "--json")
    assert result.exit_code == 1
    items = {Path(i["input"]).name: i for i in json_lines(result) if i["type"] == "item"}
    assert set(items) == {"IMG_0001.HEIC", "photo.jxl", "scan.jfif", "web.avif"}  # none left out without a word
    assert "HEIC/HEIF images cannot be read; convert it to JPEG, PNG or TIFF first" in items["IMG_0001.HEIC"]["error"]
    assert "JPEG XL images cannot be read" in items["photo.jxl"]["error"]
    assert items["scan.jfif"]["status"] == "ok" and Image.open(items["scan.jfif"]["output"]).format == "JPEG"
    assert items["web.avif"]["status"] == "ok" and items["web.avif"]["output"].endswith("web.png")


def test_an_output_folder_that_cannot_be_made_is_named(photos, model2):
    result = invoke("restore", photos / "rocket.jpg", "-o", photos / "rocket.jpg" / "out", "--model", model2)
    assert result.exit_code == 2  # before any image: each would fail the same way
    assert f"-o {photos / 'rocket.jpg' / 'out'}: lies under {photos / 'rocket.jpg'}, which is a file" in result.stderr


def test_stdin_to_stdout(model2):
    data = (TEST_INPUTS / "rocket.jpg").read_bytes()
    result = invoke("restore", "-", "-o", "-", "--model", model2, "--format", "png", input=data)
    assert result.exit_code == 0, result.stderr
    image = Image.open(io.BytesIO(result.stdout_bytes))
    assert image.format == "PNG" and image.size == (192, 128)


def test_stdout_refuses_json_and_several_inputs(model2, photos):
    assert invoke("restore", "-", "-o", "-", "--json", "--model", model2).exit_code == 2
    result = invoke("restore", photos / "rocket.jpg", photos / "cameraman_gray.png", "-o", "-", "--model", model2)
    assert result.exit_code == 2 and "one image to stdout" in result.stderr


def test_format_suffix_quality_and_outscale(photos, model2, tmp_path):
    out = tmp_path / "o"
    result = invoke("restore", photos / "chelsea_16bit.png", "-o", out, "--model", model2, "--format", "webp",
                    "--suffix", "_x", "--quality", "80", "--outscale", "3.5", "--json")
    assert result.exit_code == 0, result.stderr
    written = Image.open(out / "chelsea_16bit_x.webp")
    assert written.format == "WEBP" and written.size == (420, 280)
    tiff = invoke("restore", photos / "chelsea_16bit.png", "-o", out, "--model", model2, "--format", "tiff")
    assert tiff.exit_code == 0
    assert read_rgb(out / "chelsea_16bit.tif").dtype == np.uint16


def test_an_output_too_large_for_its_format_fails_before_the_model_runs(model2, tmp_path, monkeypatch):
    """JPEG holds 65500 pixels a side and WebP 16383: the image fails at once, naming the file, the size and
    what to use instead, rather than after hours of upscaling; the batch goes on."""
    import cv2

    import restorecli.pipeline.runner as pipeline

    ran = []
    for name in ("enhance", "enhance_rows"):
        real = getattr(pipeline, name)
        monkeypatch.setattr(pipeline, name, lambda *a, _real=real, **k: ran.append(a[1].shape) or _real(*a, **k))
    wide, small = tmp_path / "wide.png", tmp_path / "small.png"
    cv2.imwrite(str(wide), np.full((2, 8192, 3), 128, np.uint8))  # 2x: 16384 wide
    cv2.imwrite(str(small), np.full((8, 8, 3), 128, np.uint8))
    for fmt, extra, limit in (("webp", (), 16383), ("jpg", ("--outscale", "16"), 65500)):  # 131072 wide
        out = tmp_path / fmt
        result = invoke("restore", wide, small, "-o", out, "--model", model2, "--format", fmt, "--json", *extra)
        assert result.exit_code == 1, result.stderr
        failed, done = json_lines(result)[:2]
        assert failed["status"] == "error" and done["status"] == "ok"
        assert str(wide) in failed["error"] and f"at most {limit} pixels a side" in failed["error"]
        assert "--format png" in failed["error"]
        assert sorted(p.name for p in out.iterdir()) == [f"small.{fmt}"]
    assert ran == [(8, 8, 3), (8, 8, 3)]  # only the small image reached the model


def test_unsafe_suffix_is_refused(photos, model2, tmp_path):
    result = invoke("restore", photos / "rocket.jpg", "-o", tmp_path / "o", "--model", model2, "--suffix", "/../../x")
    assert result.exit_code == 2 and "unsafe file name" in result.stderr
    assert not any(tmp_path.rglob("x.jpg"))


def test_dry_run_writes_nothing(photos, model2, tmp_path):
    out = tmp_path / "o"
    result = invoke("restore", photos, "-o", out, "--model", "realesrgan-x4plus", "--dry-run", "--json")
    assert result.exit_code == 0, result.stderr
    items = [i for i in json_lines(result) if i["type"] == "item"]
    assert {i["status"] for i in items} == {"planned"}
    rocket = next(i for i in items if i["input"].endswith("rocket.jpg"))
    assert rocket["out_size"] == [384, 256]
    assert not out.exists()
    plain = invoke("restore", photos / "rocket.jpg", "-o", out, "--model", "realesrgan-x4plus", "--dry-run",
                   "--outscale", "3")
    assert plain.exit_code == 0 and plain.stdout == f"{out / 'rocket.jpg'}\n"  # stdout: only the paths
    assert f"would write {out / 'rocket.jpg'} (96x64 -> 288x192)" in plain.stderr
    assert not out.exists()


@pytest.mark.parametrize("fmt", ["jpg", "webp"])  # written as the rows come, and all at the end
def test_failure_while_writing_leaves_no_partial_output(photos, model2, tmp_path, monkeypatch, fmt):
    import restorecli.files as files

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full_disk)  # the atomic writer's last step before the rename
    out = tmp_path / "o"
    result = invoke("restore", photos / "rocket.jpg", "-o", out, "--model", model2, "--json", "--format", fmt)
    assert result.exit_code == 1
    assert "No space left on device" in json_lines(result)[0]["error"]
    assert list(out.iterdir()) == []


XMP = (b'<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
       b'<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about="" '
       b'xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6" '
       b'xmlns:exif="http://ns.adobe.com/exif/1.0/" exif:PixelXDimension="96"><exif:PixelYDimension>64'
       b'</exif:PixelYDimension><dc:subject><rdf:Bag><rdf:li>grandmother</rdf:li><rdf:li>1962</rdf:li></rdf:Bag></dc:subject>'
       b'</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>')


def with_xmp(jpeg: bytes, packet: bytes) -> bytes:
    """A JPEG with an XMP APP1 segment after its SOI (as cameras and Lightroom write; any Pillow version)."""
    payload = b"http://ns.adobe.com/xap/1.0/\x00" + packet
    return jpeg[:2] + b"\xff\xe1" + (2 + len(payload)).to_bytes(2, "big") + payload + jpeg[2:]


IPTC = b"\x1c\x02\x78\x00\x11Grandmother, 1962\x1c\x02\x19\x00\x06family"  # 2:120 caption, 2:25 keyword


def with_iptc(jpeg: bytes, records: bytes) -> bytes:
    """A JPEG with IPTC-IIM records in Photoshop's APP13 resource 0x0404, as press and archive software writes."""
    payload = (b"Photoshop 3.0\x00" + b"8BIM\x04\x04\x00\x00" + len(records).to_bytes(4, "big") + records
               + bytes(len(records) % 2))
    return jpeg[:2] + b"\xff\xed" + (2 + len(payload)).to_bytes(2, "big") + payload + jpeg[2:]


@pytest.mark.parametrize("fmt", ["jpg", "tiff"])
def test_iptc_captions_and_keywords_survive_into_jpeg_and_tiff(tmp_path, model2, fmt):
    from PIL import IptcImagePlugin

    path = tmp_path / "captioned.jpg"
    path.write_bytes(with_iptc((TEST_INPUTS / "rocket.jpg").read_bytes(), IPTC))
    result = invoke("restore", path, "-o", tmp_path / "o", "--model", model2, "--format", fmt)
    assert result.exit_code == 0, result.stderr
    with Image.open(tmp_path / "o" / f"captioned.{'tif' if fmt == 'tiff' else fmt}") as written:
        info = IptcImagePlugin.getiptcinfo(written)  # Pillow's own reader, for both formats
    assert info[(2, 120)] == b"Grandmother, 1962" and info[(2, 25)] == b"family"


@pytest.mark.parametrize("fmt", ["jpg", "png", "tiff", "webp"])
def test_exif_orientation_and_metadata_survive(tmp_path, model2, fmt):
    """The EXIF and the XMP packet (an archive's keywords, captions, ratings) reach every output format, both with
    their orientation reset, since the pixels are stored upright, and the image size they record updated."""
    import re

    from restorecli.images import decode_image
    from restorecli.images.metadata import recorded_stages

    source = Image.open(TEST_INPUTS / "rocket.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: a viewer rotates it 90 degrees clockwise
    exif[0x010F] = "TestCam"
    exif[0x8769] = {0xA002: 96, 0xA003: 64, 0x9003: "1962:07:01 12:00:00"}  # the Exif directory: size, date taken
    path = tmp_path / "sideways.jpg"
    encoded = io.BytesIO()
    source.save(encoded, "JPEG", exif=exif.tobytes(), quality=95)
    path.write_bytes(with_xmp(encoded.getvalue(), XMP))
    result = invoke("restore", path, "-o", tmp_path / "o", "--model", model2, "--format", fmt)
    assert result.exit_code == 0, result.stderr
    output = tmp_path / "o" / f"sideways.{'tif' if fmt == 'tiff' else fmt}"
    written = Image.open(output)
    assert written.size == (128, 192)  # upright: 64x96 -> 2x
    assert written.getexif()[0x010F] == "TestCam" and written.getexif().get(0x0112, 1) == 1
    assert written.getexif().get_ifd(0x8769) == {0xA002: 128, 0xA003: 192, 0x9003: "1962:07:01 12:00:00"}
    xmp = decode_image(output.read_bytes(), output.name).xmp
    assert recorded_stages(xmp) == [f"model:{model2.stem}"]  # the processing record, beside the input's own
    record = re.search(rb'<rdf:Description rdf:about="" xmlns:restorecli=.*?</rdf:Description>', xmp).group(0)
    assert xmp.replace(record, b"") == (XMP.replace(b'tiff:Orientation="6"', b'tiff:Orientation="1"')
                                        .replace(b'PixelXDimension="96"', b'PixelXDimension="128"')
                                        .replace(b">64<", b">192<"))


def test_a_tiff_too_large_for_classic_offsets_is_a_bigtiff_and_reads_back(photos, model2, tmp_path, monkeypatch):
    """Past 4 GiB of samples a TIFF is written as BigTIFF (here the limit is lowered to 64 KiB, as writing 4 GiB
    would take a test too long), and restorecli reads it back, EXIF included, to restore it again as a JPEG."""
    import tifffile

    from restorecli.images import tiff

    monkeypatch.setattr(tiff, "_CLASSIC_LIMIT", 1 << 16)
    exif = Image.Exif()
    exif[0x010F] = "TestCam"
    exif[0x8769] = {0x9003: "1962:07:01 12:00:00"}
    source = tmp_path / "scan.jpg"
    Image.open(TEST_INPUTS / "rocket.jpg").save(source, "JPEG", exif=exif.tobytes(), quality=95)
    result = invoke("restore", source, "-o", tmp_path / "big", "--model", model2, "--format", "tiff")
    assert result.exit_code == 0, result.stderr
    with tifffile.TiffFile(tmp_path / "big" / "scan.tif") as written:
        assert written.is_bigtiff and written.pages[0].shape == (128, 192, 3)
    again = invoke("restore", tmp_path / "big" / "scan.tif", "-o", tmp_path / "jpg", "--model", model2,
                   "--format", "jpg")
    assert again.exit_code == 0, again.stderr
    written = Image.open(tmp_path / "jpg" / "scan.jpg")
    assert written.size == (384, 256)
    assert written.getexif()[0x010F] == "TestCam"
    assert written.getexif().get_ifd(0x8769)[0x9003] == "1962:07:01 12:00:00"


@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_a_cmyk_scan_is_restored_in_its_profile_s_colours_and_tagged_srgb(model2, tmp_path, fmt):
    from icc_profiles import cmyk_jpeg, ink_rgb

    from restorecli.images import srgb_profile

    scan = tmp_path / "scan.jpg"
    scan.write_bytes(cmyk_jpeg([(255, 0, 0, 0), (0, 0, 0, 0)], size=32))
    out = tmp_path / "o"
    result = invoke("restore", scan, "-o", out, "--model", model2, "--format", fmt)
    assert result.exit_code == 0, result.stderr
    written = Image.open(out / f"scan.{fmt}")
    assert written.mode == "RGB" and written.info["icc_profile"] == srgb_profile()
    cyan = np.asarray(written)[32, 32].astype(int)  # the middle of the first patch, 2x
    assert np.abs(cyan - ink_rgb(1, 0, 0, 0)).max() <= 30, cyan  # the tiny random model moves colours a little
    assert cyan[1] < 200  # the plain formula's cyan would be (0, 255, 255)


def test_alpha_resize_mode(photos, model2, tmp_path):
    result = invoke("restore", photos / "coffee_alpha.png", "-o", tmp_path / "o", "--model", model2,
                    "--alpha", "resize")
    assert result.exit_code == 0
    assert read_rgb(tmp_path / "o" / "coffee_alpha.png").shape == (170, 256, 4)


@pytest.mark.real_weights
def test_default_model_restores_offline_from_embedded_weights(photos, real_weights, tmp_path):
    result = invoke("restore", photos / "rocket.jpg", "-o", tmp_path / "o", "--weights-dir", real_weights, "--json")
    assert result.exit_code == 0, result.stderr
    item = json_lines(result)[0]
    assert item["out_size"] == [384, 256]
    out = read_rgb(tmp_path / "o" / "rocket.jpg")
    src = read_rgb(photos / "rocket.jpg")
    # a real 4x model: its result, shrunk back, resembles the input
    import cv2

    back = cv2.resize(out, (96, 64), interpolation=cv2.INTER_AREA)
    assert np.abs(back.astype(int) - src.astype(int)).mean() < 12


def test_stdin_to_a_folder_is_named_after_its_format(model2, tmp_path):
    data = (TEST_INPUTS / "cameraman_gray.png").read_bytes()
    result = invoke("restore", "-", "-o", tmp_path / "o", "--model", model2, "--json", input=data)
    assert result.exit_code == 0, result.stderr
    assert json_lines(result)[0]["output"] == str(tmp_path / "o" / "stdin.png")
    assert read_rgb(tmp_path / "o" / "stdin.png").shape == (256, 256)
    # another piped image is new, whatever the folder holds: not "skipped" as a resumed file would be
    other = (TEST_INPUTS / "coffee_alpha.png").read_bytes()
    again = invoke("restore", "-", "-o", tmp_path / "o", "--model", model2, "--json", input=other)
    assert again.exit_code == 1 and json_lines(again)[0]["status"] == "error"
    assert "stdin.png exists (from an earlier image); add --overwrite" in json_lines(again)[0]["error"]
    assert read_rgb(tmp_path / "o" / "stdin.png").shape == (256, 256)  # the earlier result is kept
    replaced = invoke("restore", "-", "-o", tmp_path / "o", "--model", model2, "--overwrite", input=other)
    assert replaced.exit_code == 0 and read_rgb(tmp_path / "o" / "stdin.png").shape == (170, 256, 4)


@pytest.mark.parametrize("failure, shown", [
    (RuntimeError("CUDA out of memory. Tried to allocate 9.00 GiB"), "rocket.jpg: not enough memory to restore it"),
    (KeyError("a failure nobody foresaw"), "KeyError: 'a failure nobody foresaw'"),  # never stops the batch either
    # words for a person, with the limits to lower, never Python's own text for these
    (MemoryError(), "rocket.jpg: not enough memory to restore it (96x64 pixels in); lower --tile or --outscale"),
    (OverflowError("Python int too large to convert to C long"), "rocket.jpg: too large to restore (96x64 pixels "
                                                                 "in), past what the encoder or the arrays can address"),
])
def test_a_model_failure_on_one_image_is_that_image_s_error(photos, model2, tmp_path, monkeypatch, failure, shown):
    import restorecli.pipeline.runner as pipeline

    def flaky(real):
        def run(model, color, *args, **kwargs):
            if color.shape[:2] == (64, 96):  # rocket.jpg
                raise failure
            return real(model, color, *args, **kwargs)
        return run

    for name in ("enhance", "enhance_rows"):  # outputs encoded whole, and a strip at a time
        monkeypatch.setattr(pipeline, name, flaky(getattr(pipeline, name)))
    result = invoke("restore", photos / "rocket.jpg", photos / "cameraman_gray.png", "-o", tmp_path / "o",
                    "--model", model2, "--json")
    assert result.exit_code == 1
    rocket, camera = json_lines(result)[:2]
    assert rocket["status"] == "error" and shown in rocket["error"] and camera["status"] == "ok"
    assert "MemoryError" not in rocket["error"] and "OverflowError" not in rocket["error"]


def test_png_outputs_are_streamed_and_equal_the_whole_image_encoding(photos, model2, tmp_path, monkeypatch):
    """A PNG that needs no faces or resize is written strip by strip as tiles finish; the file is byte for
    byte what encoding the whole result gives (grey, 16-bit, alpha through the model or resized, 16-bit grey
    with alpha, and with EXIF and an ICC profile)."""
    import restorecli.pipeline.runner as pipeline
    from PIL import ImageCms

    from restorecli.images import encode_image
    from restorecli.pipeline import RestoreOptions, Restorer

    tagged = tmp_path / "tagged.png"
    exif = Image.Exif()
    exif[0x010F] = "TestCam"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.open(photos / "rocket.jpg").save(tagged, exif=exif.tobytes(), icc_profile=icc)
    grey_alpha = tmp_path / "grey_alpha16.png"  # 16-bit grey with a ramp of alpha
    grey = np.ascontiguousarray(read_rgb(photos / "chelsea_16bit.png")[:, :, 1:2])
    ramp = np.linspace(0, 65535, grey.size).reshape(grey.shape[:2]).astype(np.uint16)
    grey_alpha.write_bytes(encode_image(grey, ramp, "png"))
    inputs = [photos / "cameraman_gray.png", photos / "chelsea_16bit.png", tagged, photos / "coffee_alpha.png",
              grey_alpha]
    streamed = []
    real = pipeline.enhance_rows
    monkeypatch.setattr(pipeline, "enhance_rows", lambda *a, **k: streamed.append(a[1].shape) or real(*a, **k))
    for mode in ("model", "resize"):
        out = tmp_path / mode
        result = invoke("restore", *inputs, "-o", out, "--model", model2, "--tile", "24", "--alpha", mode)
        assert result.exit_code == 0, result.stderr
        options = RestoreOptions(model=str(model2), tile=24, alpha=mode)
        restorer = Restorer.from_options(options)
        for path in inputs:
            whole = restorer.restore_bytes(path.read_bytes(), path.name, options, "png").data
            assert (out / path.name).read_bytes() == whole, (mode, path.name)
    assert len(streamed) == 2 * len(inputs)
    assert read_rgb(tmp_path / "model" / "coffee_alpha.png").shape[2] == 4
    assert read_rgb(tmp_path / "model" / "grey_alpha16.png").dtype == np.uint16
    out = tmp_path / "model"
    written = Image.open(out / "tagged.png")
    assert written.info["icc_profile"] == icc and written.getexif()[0x010F] == "TestCam"
    assert read_rgb(out / "chelsea_16bit.png").dtype == np.uint16


@pytest.mark.parametrize("outscale", ["2", "3", "6"])  # on a 4x model: a whole-number shrink, 4/3 shrink, 1.5x up
def test_any_outscale_is_streamed_with_the_bytes_of_the_whole_resize(photos, make_model, tmp_path, monkeypatch,
                                                                      outscale):
    """The strips are resized on their way to the PNG (k-row block means for a whole-number shrink, the
    separable area or Lanczos-4 filter otherwise), and the file is byte for byte the whole result resized
    and encoded."""
    import restorecli.pipeline.runner as pipeline

    from restorecli.pipeline import RestoreOptions, Restorer

    model4 = make_model(4)
    inputs = [photos / "cameraman_gray.png", photos / "chelsea_16bit.png"]
    streamed = []
    real = pipeline.enhance_rows
    monkeypatch.setattr(pipeline, "enhance_rows", lambda *a, **k: streamed.append(a[1].shape) or real(*a, **k))
    out = tmp_path / "o"
    result = invoke("restore", *inputs, "-o", out, "--model", model4, "--outscale", outscale, "--tile", "32",
                    "--json")
    assert result.exit_code == 0, result.stderr
    assert len(streamed) == 2
    items = [line for line in json_lines(result) if line["type"] == "item"]
    scale = float(outscale)
    assert all(item["out_size"] == [round(scale * item["in_size"][0]), round(scale * item["in_size"][1])]
               for item in items)
    options = RestoreOptions(model=str(model4), tile=32, outscale=scale)
    restorer = Restorer.from_options(options)
    for path in inputs:
        whole = restorer.restore_bytes(path.read_bytes(), path.name, options, "png").data
        assert (out / path.name).read_bytes() == whole, path.name


def test_a_failure_in_the_middle_of_a_streamed_png_leaves_nothing(photos, model2, tmp_path, monkeypatch):
    import restorecli.pipeline.runner as pipeline

    real, calls = pipeline.enhance_rows, []

    def fail_after_some_rows(model, color, options, sink, on_tile=None, outscale=None, alpha=None):
        calls.append(color.shape)
        if len(calls) > 1:  # the first image only
            return real(model, color, options, sink, on_tile, outscale, alpha)
        sink.write(np.zeros((4, color.shape[1] * 2, color.shape[2]), color.dtype))
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(pipeline, "enhance_rows", fail_after_some_rows)
    out = tmp_path / "o"
    result = invoke("restore", photos / "cameraman_gray.png", photos / "rocket.jpg", "-o", out, "--model", model2,
                    "--json")
    assert result.exit_code == 1
    camera, rocket = json_lines(result)[:2]
    assert camera["status"] == "error" and "illegal memory access" in camera["error"]
    assert "cameraman_gray.png" in camera["error"] and rocket["status"] == "ok"
    assert sorted(p.name for p in out.iterdir()) == ["rocket.jpg"]  # no partial PNG, no temporary file


_PEAK_PROBE = """
import sys
from restorecli.cli.app import main
try:
    main()
finally:  # the high-water mark of this process image (ru_maxrss would include the parent's, from before exec)
    peak = next(line for line in open('/proc/self/status') if line.startswith('VmHWM:'))
    sys.stderr.write('peak-kib ' + peak.split()[1] + chr(10))
"""


def _peak_rss_of_restore(*args) -> int:
    """Run the real CLI in a fresh process; return its peak resident memory in bytes."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _PEAK_PROBE, "restore", *map(str, args)], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    return int(done.stderr.rsplit("peak-kib ", 1)[1].split()[0]) * 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak memory is read from /proc (Linux only)")
@pytest.mark.parametrize("fmt, outscale", [  # 11-14 s each on 2 cores: the model's own scale in the default suite
    ("png", None), pytest.param("png", "2", marks=pytest.mark.slow), pytest.param("png", "3", marks=pytest.mark.slow),
    pytest.param("png", "6", marks=pytest.mark.slow), pytest.param("jpg", None, marks=pytest.mark.slow)])
def test_a_large_image_is_restored_without_holding_its_output(make_model, tmp_path, fmt, outscale):
    """1000x1000 -> 4000x4000 (a 48 MB uint8 output) as PNG or JPEG, or resized on the way to 2000x2000,
    3000x3000 or 6000x6000 (108 MB): the process peaks less than 3/4 of the model's result or of the output,
    whichever is larger, above the same command on a 256x256 image (which runs the same batches of 64 px
    tiles). Holding either whole would take all of it."""
    import cv2

    model = make_model(4)
    rng = np.random.default_rng(0)
    small, large = tmp_path / "small.png", tmp_path / "large.png"
    large_rgb = cv2.resize(read_rgb(TEST_INPUTS / "rocket.jpg"), (1000, 1000), interpolation=cv2.INTER_CUBIC)
    large_rgb = np.clip(large_rgb + rng.normal(0, 3, large_rgb.shape), 0, 255).astype(np.uint8)
    cv2.imwrite(str(large), large_rgb)
    cv2.imwrite(str(small), large_rgb[:256, :256])
    common = ("--model", model, "--tile", "64", "--device", "cpu", "--format", fmt,
              *(("--outscale", outscale) if outscale else ()))
    baseline = _peak_rss_of_restore(small, "-o", tmp_path / "o1", *common)
    peak = _peak_rss_of_restore(large, "-o", tmp_path / "o2", *common)
    side = 1000 * int(outscale or 4)
    assert read_rgb(tmp_path / "o2" / f"large.{fmt}").shape == (side, side, 3)
    whole_bytes = max(4000, side) ** 2 * 3
    # what is held beside the strips: the writer thread's queue (4 MiB), the PNG deflate threads' segments (2 MiB
    # each, 2 a thread) and the allocator's arenas for those threads, measured at 25-33 MiB on 2 cores
    assert peak - baseline < whole_bytes * 0.75, f"{(peak - baseline) / 2**20:.0f} MiB above the small run"


def test_progress_follows_the_tiles_of_the_current_image(photos, model2):
    """Big images take minutes on a CPU: the progress line shows the tile count of the one in hand."""
    from restorecli.cli.render import BatchRenderer
    from restorecli.pipeline import RestoreOptions, restore_batch

    events = []
    options = RestoreOptions(model=str(model2), tile=32, dry_run=False, output_dir=str(photos.parent / "o"))
    restore_batch([str(photos / "cameraman_gray.png"), str(photos / "rocket.jpg")], options,
                  on_progress=lambda event, payload: events.append((event, payload)))
    names = [e for e, _ in events]
    assert names[0] == "start" and names.count("done") == 2
    second = names.index("item", names.index("item") + 1)  # the camera's file is written while the rocket runs
    camera_tiles = [p for e, p in events[:second] if e == "tiles"]
    assert camera_tiles[-1] == (16, 16)  # 128x128 in 32 px tiles, streamed to PNG
    rocket_tiles = [p for e, p in events[second:] if e == "tiles"]
    assert rocket_tiles[-1] == (6, 6)  # 96x64, through the whole-image path (JPEG)
    assert [p.input for e, p in events if e == "done"] == [str(photos / "cameraman_gray.png"), str(photos / "rocket.jpg")]
    renderer = BatchRenderer(as_json=True, stdout=io.StringIO())
    renderer("start", 2)
    renderer("item", "photos/cameraman_gray.png")
    renderer("tiles", (5, 16))
    assert renderer.progress.tasks[0].fields["current"] == "photos/cameraman_gray.png [dim](tile 5/16)[/]"


@pytest.mark.parametrize("fmt, suffix", [("tiff", ".tif"), ("jpg", ".jpg"), ("webp", ".webp")])
def test_tiff_jpeg_and_webp_outputs_are_streamed_too_with_their_metadata(photos, model2, tmp_path, monkeypatch, fmt,
                                                                          suffix):
    import restorecli.pipeline.runner as pipeline
    from PIL import ImageCms

    from restorecli.images import encode_image
    from restorecli.pipeline import RestoreOptions, Restorer

    tagged = tmp_path / "tagged.tif"
    exif = Image.Exif()
    exif[0x010F] = "TestCam"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.open(photos / "rocket.jpg").save(tagged, exif=exif.tobytes(), icc_profile=icc)
    streamed = []
    real = pipeline.enhance_rows
    monkeypatch.setattr(pipeline, "enhance_rows", lambda *a, **k: streamed.append(a[1].shape) or real(*a, **k))
    grey_alpha = tmp_path / "grey_alpha16.png"  # written to TIFF as RGB+alpha, so not a strip at a time
    grey = np.ascontiguousarray(read_rgb(photos / "chelsea_16bit.png")[:, :, 1:2])
    grey_alpha.write_bytes(encode_image(grey, np.full(grey.shape[:2], 40000, np.uint16), "png"))
    inputs = (tagged, photos / "chelsea_16bit.png", grey_alpha, photos / "rocket.jpg")
    out = tmp_path / "o"
    result = invoke("restore", *inputs, "-o", out, "--model", model2, "--tile", "24", "--format", fmt,
                    "--quality", "90")
    assert result.exit_code == 0, result.stderr
    assert len(streamed) == (3 if fmt == "tiff" else 4)
    options = RestoreOptions(model=str(model2), tile=24, format=fmt, quality=90)
    restorer = Restorer.from_options(options)
    for path in inputs:
        whole = restorer.restore_bytes(path.read_bytes(), path.name, options, fmt).data
        assert (out / f"{path.stem}{suffix}").read_bytes() == whole, path.name
    written = Image.open(out / f"tagged{suffix}")
    assert written.info["icc_profile"] == icc and written.getexif()[0x010F] == "TestCam"
    if fmt == "tiff":
        assert read_rgb(out / "grey_alpha16.tif").shape[2] == 4
        assert read_rgb(out / "chelsea_16bit.tif").dtype == np.uint16
    elif fmt == "jpg":  # 8-bit, grey stays grey with its alpha composited away
        assert read_rgb(out / "chelsea_16bit.jpg").dtype == np.uint8
        assert Image.open(out / "grey_alpha16.jpg").mode == "L"
    else:  # 8-bit; WebP has no grey form, but keeps the alpha
        assert Image.open(out / "grey_alpha16.webp").mode == "RGBA"


def test_ctrl_c_ends_the_batch_with_a_summary_and_leaves_no_partial_output(photos, model2, tmp_path, monkeypatch):
    """Ctrl-C in the middle of an image: that image's temporary file goes, the images before it stay, the
    summary says how far the batch got, and the exit code is the shell's for SIGINT (130)."""
    import restorecli.pipeline.runner as pipeline

    real, seen = pipeline.enhance_rows, []

    def interrupted_in_the_second(model, color, options, sink, *args):
        seen.append(color.shape)
        if len(seen) == 2:
            sink.write(np.zeros((4, color.shape[1] * 2, color.shape[2]), color.dtype))  # part of it is on disk
            raise KeyboardInterrupt
        return real(model, color, options, sink, *args)

    monkeypatch.setattr(pipeline, "enhance_rows", interrupted_in_the_second)
    inputs = [photos / "cameraman_gray.png", photos / "chelsea_16bit.png", photos / "coffee_alpha.png"]
    out = tmp_path / "o"
    result = invoke("restore", *inputs, "-o", out, "--model", model2, "--json")
    assert result.exit_code == 130
    *items, summary = json_lines(result)
    assert [item["status"] for item in items] == ["ok"]
    assert summary["type"] == "summary" and summary["interrupted"] == "SIGINT" and summary["ok"] == 1
    assert "interrupted by SIGINT after 1 of 3 images" in result.stderr and "run the same command" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["cameraman_gray.png"]  # no partial or temporary file
    assert len(seen) == 2  # the third image was not started


def test_sigterm_stops_a_real_process_cleanly_and_a_rerun_resumes(make_model, tmp_path):
    """``kill``, ``timeout`` and service managers send SIGTERM, which would otherwise end the process at once
    and leave the image in hand's temporary file behind."""
    import signal
    import subprocess
    import sys

    import cv2

    model = make_model(4)
    photo = cv2.resize(read_rgb(TEST_INPUTS / "rocket.jpg"), (1000, 1000), interpolation=cv2.INTER_CUBIC)
    inputs = [tmp_path / "a_small.png", tmp_path / "b_large.png", tmp_path / "c_last.png"]
    for path, side in zip(inputs, (32, 1000, 32)):
        cv2.imwrite(str(path), photo[:side, :side])
    out = tmp_path / "o"
    args = ["restore", *map(str, inputs), "-o", str(out), "--model", str(model), "--tile", "64", "--json"]
    process = subprocess.Popen([sys.executable, "-c", "from restorecli.cli.app import main; main()", *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(writing(process, out / ".b_large.png.*.part"), "the large image to be written", every=0.02)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "interrupted by SIGTERM after 1 of 3 images" in stderr
    assert json.loads(stdout.splitlines()[-1])["interrupted"] == "SIGTERM"
    assert sorted(p.name for p in out.iterdir()) == ["a_small.png"]
    again = invoke(*args)
    assert again.exit_code == 0, again.stderr
    assert [item["status"] for item in json_lines(again)[:3]] == ["skipped", "ok", "ok"]


def test_two_runs_over_one_folder_share_the_images(make_model, tmp_path):
    """Overlapping cron runs: an image another live run on this machine is writing is skipped, not done twice;
    the other run finishes it."""
    import subprocess
    import sys

    import cv2

    model = make_model(4)
    photo = cv2.resize(read_rgb(TEST_INPUTS / "rocket.jpg"), (1000, 1000), interpolation=cv2.INTER_CUBIC)
    inputs = [tmp_path / "a_large.png", tmp_path / "b_small.png"]
    for path, side in zip(inputs, (1000, 32)):
        cv2.imwrite(str(path), photo[:side, :side])
    out = tmp_path / "o"
    args = ["restore", str(inputs[0]), "-o", str(out), "--model", str(model), "--tile", "64", "--json"]
    first = subprocess.Popen([sys.executable, "-c", "from restorecli.cli.app import main; main()", *args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(writing(first, out / ".a_large.png.*.part"), "the first run to write the large image", every=0.02)
    second = invoke("restore", *inputs, "-o", out, "--model", model, "--tile", "64", "--json", "--overwrite")
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert second.exit_code == 0, second.stderr
    large, small = [i for i in json_lines(second) if i["type"] == "item"]
    assert large["status"] == "skipped" and large["error"] == f"being written by another run (process {first.pid})"
    assert small["status"] == "ok"
    assert json.loads(stdout.splitlines()[0])["status"] == "ok"
    assert sorted(p.name for p in out.iterdir()) == ["a_large.png", "b_small.png"]


def test_a_rerun_removes_what_a_killed_run_left_and_nothing_else(photos, model2, tmp_path):
    """A run killed with SIGKILL leaves the image in hand's temporary file; the next run into the folder
    removes it. A dry run, which writes nothing, removes nothing."""
    from test_files import _dead_pid

    from restorecli.files import _host

    out = tmp_path / "o"
    out.mkdir()
    left = out / f".rocket.jpg.restorecli-{_dead_pid()}@{_host()}.q1w2e3r4.part"
    left.write_bytes(b"half an image")
    assert invoke("restore", photos / "rocket.jpg", "-o", out, "--model", model2, "--dry-run").exit_code == 0
    assert left.exists()
    result = invoke("restore", photos / "rocket.jpg", "-o", out, "--model", model2)
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["rocket.jpg"]


def test_stop_signals_leave_an_ignored_signal_ignored_and_restore_the_handlers():
    """Under ``nohup`` SIGHUP is ignored, and must stay so; after the block the old handlers are back."""
    import signal

    from restorecli.cli.exits import Interrupted, stop_signals

    before_hup = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    before_term = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(Interrupted) as stopped:
            with stop_signals():
                assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
                assert signal.getsignal(signal.SIGTERM) is not before_term
                raise KeyboardInterrupt
        assert stopped.value.signum == signal.SIGINT
        assert signal.getsignal(signal.SIGTERM) is before_term
    finally:
        signal.signal(signal.SIGHUP, before_hup)


def test_devices_pipes_and_oversized_files_are_errors_and_the_batch_goes_on(photos, model2, tmp_path, named_pipe):
    huge = photos / "huge.tif"
    with huge.open("wb") as handle:  # sparse: a 100 MB file that uses no disk
        handle.truncate(100 << 20)
    out = tmp_path / "o"
    result = invoke("restore", photos / "rocket.jpg", named_pipe, "/dev/zero", huge, "-o", out, "--model", model2,
                    "--max-pixels", 1_000_000, "--json")
    assert result.exit_code == 1, result.stderr
    items = {Path(i["input"]).name: i for i in json_lines(result) if i["type"] == "item"}
    assert items["rocket.jpg"]["status"] == "ok"
    assert items["pipe.png"]["error"].endswith("pipe.png: is a named pipe, not an image file")
    assert items["zero"]["error"] == "/dev/zero: is a character device, not an image file"
    assert "huge.tif: 104,857,600 bytes is more than any image within the limit of 1,000,000 pixels" in \
        items["huge.tif"]["error"]
    assert "raise --max-pixels" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["rocket.jpg"]


def test_an_output_folder_that_is_a_file_is_a_usage_error_before_any_image(photos, model2, tmp_path):
    taken = tmp_path / "notes.txt"
    taken.write_text("keep me")
    for out, said in ((taken, f"-o {taken}: is a file, not a folder"),
                      (taken / "sub", f"-o {taken / 'sub'}: lies under {taken}, which is a file, not a folder")):
        result = invoke("restore", photos / "rocket.jpg", "-o", out, "--model", model2)
        assert result.exit_code == 2 and said in result.stderr
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    result = invoke("restore", photos / "rocket.jpg", "-o", tmp_path / "gone", "--model", model2)
    assert result.exit_code == 2 and "is a broken link, not a folder" in result.stderr
    assert taken.read_text() == "keep me"


@pytest.mark.parametrize("fmt", ["png", "jpg", "tiff"])
def test_a_scan_keeps_its_print_size(photos, model2, tmp_path, fmt):
    """A 300 dpi scan restored 2x is written at 600 dpi, so it prints at the scan's size; with --outscale 3,
    at 900 dpi."""
    scan = tmp_path / "scan.png"
    Image.open(photos / "rocket.jpg").save(scan, dpi=(300, 300))
    for options, expected in (((), 600), (("--outscale", 3), 900)):
        out = tmp_path / f"o{expected}"
        result = invoke("restore", scan, "-o", out, "--model", model2, "--format", fmt, *options)
        assert result.exit_code == 0, result.stderr
        written = Image.open(next(out.iterdir()))
        assert written.info["dpi"] == pytest.approx((expected, expected), rel=1e-4)


def large_xmp_packet() -> bytes:
    """An XMP packet of about 300 KB (5000 document ancestors), past what one JPEG segment holds (64 KB)."""
    items = b"".join(b"<rdf:li>xmp.did:%032x</rdf:li>" % i for i in range(5000))
    return (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            b'<rdf:Description rdf:about="" xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/">'
            b'<photoshop:DocumentAncestors><rdf:Bag>' + items + b'</rdf:Bag></photoshop:DocumentAncestors>'
            b'</rdf:Description></rdf:RDF></x:xmpmeta>')


def test_a_large_xmp_packet_survives_jpeg_both_ways(photos, model2, tmp_path):
    """A 300 KB XMP packet (past one JPEG segment) goes PNG -> JPEG -> PNG through restore with every property."""
    from PIL.PngImagePlugin import PngInfo

    packet = large_xmp_packet()
    info = PngInfo()
    info.add_itxt("XML:com.adobe.xmp", packet.decode())
    source = tmp_path / "edited.png"
    Image.open(photos / "rocket.jpg").save(source, pnginfo=info)
    first = invoke("restore", source, "-o", tmp_path / "jpg", "--model", model2, "--format", "jpg")
    second = invoke("restore", tmp_path / "jpg" / "edited.jpg", "-o", tmp_path / "png", "--model", model2,
                    "--format", "png")
    assert first.exit_code == second.exit_code == 0, second.stderr
    carried = Image.open(tmp_path / "png" / "edited.png").info["XML:com.adobe.xmp"].encode()
    assert carried.count(b"<rdf:li>xmp.did:") == 5000 and b"HasExtendedXMP" not in carried


def test_extended_xmp_pointed_to_by_an_element_declaring_its_namespace_survives_restore(photos, model2, tmp_path):
    """Other writers put xmpNote:HasExtendedXMP in a JPEG's main packet as an element with its own xmlns."""
    import re

    from restorecli.images import encode_image
    from restorecli.images.jpeg import XMP_APP1

    packet = large_xmp_packet()
    jpeg = encode_image(np.asarray(Image.open(photos / "rocket.jpg").convert("RGB")), None, "jpg", xmp=packet)
    at = jpeg.index(XMP_APP1) - 4  # the main packet's APP1 segment: marker, length, payload
    end = at + 2 + int.from_bytes(jpeg[at + 2 : at + 4], "big")
    main = jpeg[at + 4 : end]
    note = b' xmlns:xmpNote="http://ns.adobe.com/xmp/note/"'
    digest = re.search(rb'xmpNote:HasExtendedXMP="([0-9A-F]{32})"', main).group(1)
    element = re.sub(rb' xmpNote:HasExtendedXMP="[0-9A-F]{32}"(.*?>)', rb"\1<xmpNote:HasExtendedXMP%s>%s"
                     rb"</xmpNote:HasExtendedXMP>" % (note, digest), main.replace(note, b""), count=1)
    assert b"HasExtendedXMP=" not in element and note in element
    source = tmp_path / "other writer.jpg"
    source.write_bytes(jpeg[:at] + b"\xff\xe1" + (len(element) + 2).to_bytes(2, "big") + element + jpeg[end:])
    result = invoke("restore", source, "-o", tmp_path / "png", "--model", model2, "--format", "png")
    assert result.exit_code == 0, result.stderr
    carried = Image.open(tmp_path / "png" / "other writer.png").info["XML:com.adobe.xmp"].encode()
    assert carried.count(b"<rdf:li>xmp.did:") == 5000 and b"HasExtendedXMP" not in carried


def test_a_photoshop_tiff_restores_to_jpeg_and_tiff_without_its_old_layers(model2, tmp_path):
    from PIL import TiffImagePlugin

    directory = TiffImagePlugin.ImageFileDirectory_v2()
    directory[34377], directory[37724] = b"8BIM" + bytes(100_000), b"Adobe Photoshop Document Data Block\x00"
    directory.tagtype[34377] = directory.tagtype[37724] = 7
    directory[271] = "ScanCo"
    scan = tmp_path / "scan.tif"
    Image.open(TEST_INPUTS / "rocket.jpg").save(scan, tiffinfo=directory)
    for fmt in ("jpg", "tiff"):
        result = invoke("restore", scan, "-o", tmp_path / fmt, "--model", model2, "--format", fmt)
        assert result.exit_code == 0, result.stderr  # JPEG failed: "EXIF data is too long"
        written = Image.open(next((tmp_path / fmt).iterdir()))
        tags = written.tag_v2 if fmt == "tiff" else written.getexif()
        assert tags.get(271) == "ScanCo" and not {34377, 37724} & set(tags)
