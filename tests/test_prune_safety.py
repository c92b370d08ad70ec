"""`restorecli prune PATH` on a folder that is not a queue: it deletes only what restorecli wrote there and left
behind (an atomic write's temporary file whose writer died), never originals, however old, never links or
folders, and never anything a live writer still holds."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


from conftest import TEST_INPUTS
from helpers.cli import invoke as cli
from restorecli.files import temporary_writer, writer_tag

MONTH_AGO = time.time() - 30 * 86400

# A restore killed while it writes its output, as the out-of-memory killer would: its temporary file stays behind
KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from restorecli.files import atomic_writer
with atomic_writer(Path(sys.argv[1])) as handle:
    handle.write(b"half an image")
    handle.flush()
    os.kill(os.getpid(), signal.SIGKILL)
"""


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` (not following links) with what it is: a file's hash, a link's target."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                found[rel] = "link to " + os.readlink(path)
            elif path.is_dir():
                found[rel] = "folder"
            else:
                found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def age(*paths: Path) -> None:
    for path in paths:
        os.utime(path, (MONTH_AGO, MONTH_AGO), follow_symlinks=False)


def killed_writer_temporary(output: Path) -> Path:
    """The temporary file a restore writing ``output`` leaves when it is killed mid-write."""
    subprocess.run([sys.executable, "-c", KILLED_WRITER, str(output)], timeout=60)
    left = [p for p in output.parent.iterdir() if temporary_writer(p.name)]
    assert len(left) == 1 and not output.exists(), left
    return left[0]


def test_a_plain_folder_of_old_originals_survives_prune_byte_for_byte(tmp_path):
    photos = tmp_path / "photos"
    (photos / "2019" / "empty").mkdir(parents=True)
    shutil.copy(TEST_INPUTS / "rocket.jpg", photos / "rocket.jpg")
    shutil.copy(TEST_INPUTS / "cameraman_gray.png", photos / "2019" / "cameraman_gray.png")
    (photos / "notes.txt").write_text("shot on film")
    (photos / ".hidden.part").write_bytes(b"another program's partial download")
    (photos / ".x.png.restorecli-1@elsewhere.part").write_bytes(b"named almost like restorecli's, but not quite")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "kept.png").write_bytes(b"a file behind a link")
    os.symlink(elsewhere, photos / "linked-folder")
    os.symlink(elsewhere / "kept.png", photos / "linked-file.png")
    age(*[Path(folder) / name for folder, dirs, files in os.walk(photos) for name in dirs + files], photos)
    before, behind_link = snapshot(photos), snapshot(elsewhere)

    dry = cli("prune", photos, "--older-than", "1d", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.stdout) == {"dry_run": True, "removed": [], "bytes_freed": 0}
    result = cli("prune", photos, "--older-than", "1d")
    assert result.exit_code == 0, result.output
    assert "removed 0 item(s), 0 bytes" in result.stderr
    assert "kept 7 older file(s)" in result.stderr  # photos, notes, look-alikes and links: all still there
    assert snapshot(photos) == before and snapshot(elsewhere) == behind_link


def test_restorecli_s_own_stale_temporaries_are_removed_and_nothing_else(tmp_path):
    results = tmp_path / "results"
    (results / "sub").mkdir(parents=True)
    shutil.copy(TEST_INPUTS / "rocket.jpg", results / "rocket.jpg")  # an output, or an original: the same to prune
    stale = killed_writer_temporary(results / "sub" / "cameraman_gray.png")
    young = killed_writer_temporary(results / "young.png")
    # a write still under way in a live process (this one), however old its file looks
    live = results / f".big.tif.restorecli-{writer_tag()}.abcd1234.part"
    live.write_bytes(b"still being written")
    assert temporary_writer(live.name) == writer_tag()
    age(results / "rocket.jpg", stale, live)
    kept = {p: p.read_bytes() for p in (results / "rocket.jpg", young, live)}

    dry = cli("prune", results, "--older-than", "1h", "--dry-run", "--json")
    assert [r["path"] for r in json.loads(dry.stdout)["removed"]] == [str(stale)] and stale.exists()
    result = cli("prune", results, "--older-than", "1h", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"dry_run": False, "removed": [{"path": str(stale), "bytes": 13}],
                                         "bytes_freed": 13}
    assert not stale.exists() and (results / "sub").is_dir()  # the folder is not restorecli's to remove
    assert {p: p.read_bytes() for p in kept} == kept
    assert "kept 2 older file(s)" in result.stderr  # rocket.jpg and the live writer's file
