"""The output plan, as a library: what ``plan_outputs`` decides for each input (write, skip, error, and why) from
the options and what it is told of the file system, and that deciding writes nothing. The CLI tests in
test_cli_restore.py show the same rules end to end."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest

from conftest import TEST_INPUTS
from restorecli.errors import UsageError
from restorecli.files import STDIO
from restorecli.pipeline import (
    FileFacts,
    InputItem,
    PlannedOutput,
    RestoreOptions,
    collect_inputs,
    plan_outputs,
    restore_batch,
)


def _item(path: Path) -> InputItem:
    return InputItem(str(path), Path(path.name))


def _photo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(TEST_INPUTS / "rocket.jpg", path)
    return path


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"" for p in root.rglob("*")}


def _no_writer(path: Path) -> int | None:
    return None


@pytest.mark.parametrize("second", ["x.jpg", "X.JPG"])  # one file on macOS's and Windows' file systems too
def test_two_inputs_with_one_output_name_collide(tmp_path, second):
    a, b = _photo(tmp_path / "a" / "x.jpg"), _photo(tmp_path / "b" / second)
    out = tmp_path / "o"
    plan = plan_outputs([_item(a), _item(b)], RestoreOptions(output_dir=str(out)))
    assert plan[0] == PlannedOutput(_item(a), "write", out / "x.jpg")
    clash = out / f"{Path(second).stem}.jpg"  # the stem as it is, the suffix in lower case
    assert plan[1] == PlannedOutput(_item(b), "error", clash, f"{b}: output {clash} collides with that of {a}")


def test_the_same_file_named_twice_is_planned_once(tmp_path):
    photo = _photo(tmp_path / "photos" / "rocket.jpg")
    (photo.parent / "link.jpg").hardlink_to(photo)  # one file, but a name of its own: an output of its own
    out = tmp_path / "o"
    items = [_item(photo), _item(tmp_path / "photos" / ".." / "photos" / "rocket.jpg"),
             *collect_inputs([str(photo.parent)], recursive=False)]
    plan = plan_outputs(items, RestoreOptions(output_dir=str(out)))
    assert [(p.action, p.output.name) for p in plan] == [("write", "rocket.jpg"), ("skip", "rocket.jpg"),
                                                         ("write", "link.jpg"), ("skip", "rocket.jpg")]
    assert {p.reason for p in plan if p.action == "skip"} == {f"the same file as the earlier input {photo}"}


@pytest.mark.parametrize("dry_run", [False, True])
def test_an_existing_output_is_skipped_and_overwrite_redoes_it(tmp_path, dry_run):
    photo = _photo(tmp_path / "in" / "rocket.jpg")
    out = tmp_path / "o"
    _photo(out / "rocket.jpg")  # a result of an earlier run
    (skipped,) = plan_outputs([_item(photo)], RestoreOptions(output_dir=str(out), dry_run=dry_run))
    assert skipped == PlannedOutput(_item(photo), "skip", out / "rocket.jpg", "output exists")
    (redone,) = plan_outputs([_item(photo)], RestoreOptions(output_dir=str(out), overwrite=True, dry_run=dry_run))
    assert redone == PlannedOutput(_item(photo), "write", out / "rocket.jpg")


@pytest.mark.parametrize("overwrite", [False, True])
def test_an_output_that_is_an_input_file_is_an_error(tmp_path, overwrite):
    """Into the inputs' own folder: rocket.jpg's output is rocket.jpg itself, and with --suffix _x, rocket.jpg's
    is rocket_x.jpg, another input of the batch; rocket_x.jpg's own output (rocket_x_x.jpg) is free."""
    folder = tmp_path / "photos"
    photo, other = _photo(folder / "rocket.jpg"), _photo(folder / "rocket_x.jpg")
    (itself,) = plan_outputs([_item(photo)], RestoreOptions(output_dir=str(folder), overwrite=overwrite))
    assert itself.action == "error" and itself.output == photo
    assert itself.reason == (f"{photo}: output {photo} is the input itself, which is never overwritten; "
                             "write to another folder (-o) or add a --suffix")
    first, second = plan_outputs([_item(photo), _item(other)],
                                 RestoreOptions(output_dir=str(folder), suffix="_x", overwrite=overwrite))
    assert first.action == "error" and f"output {other} is the input {other}, which" in first.reason
    assert second == PlannedOutput(_item(other), "write", folder / "rocket_x_x.jpg")


def test_names_that_differ_in_case_only_are_one_file_where_the_file_system_says_so(tmp_path):
    """On a case-insensitive file system b.JPG's output b.jpg is b.JPG itself: told so by the facts handed in,
    the plan refuses it without any such file system here."""
    folder = tmp_path / "photos"
    files = {str(folder / "b.JPG").casefold(): (1, 7)}

    def identity(path: Path):
        return files.get(str(path).casefold())

    facts = FileFacts(identity=identity, exists=lambda path: identity(path) is not None, writer_of=_no_writer)
    item = InputItem(str(folder / "b.JPG"), Path("b.JPG"))
    (planned,) = plan_outputs([item], RestoreOptions(output_dir=str(folder), overwrite=True), facts)
    assert planned.action == "error" and planned.output == folder / "b.jpg"
    assert f"output {folder / 'b.jpg'} is the input itself" in planned.reason
    assert not folder.exists()  # nothing was there, and planning made nothing


def test_an_output_another_run_is_writing_is_left_to_it_even_with_overwrite(tmp_path):
    photo = _photo(tmp_path / "in" / "rocket.jpg")
    out = tmp_path / "o"
    facts = FileFacts(writer_of=lambda path: 4242 if path == out / "rocket.jpg" else None)
    (planned,) = plan_outputs([_item(photo)], RestoreOptions(output_dir=str(out), overwrite=True), facts)
    assert planned == PlannedOutput(_item(photo), "skip", out / "rocket.jpg",
                                    "being written by another run (process 4242)")


def test_a_dry_run_is_planned_like_a_run_and_planning_writes_nothing(tmp_path):
    photos = tmp_path / "photos"
    shutil.copytree(TEST_INPUTS, photos, ignore=shutil.ignore_patterns("*.py", "*.md"))
    before = _tree(tmp_path)
    out = tmp_path / "deep" / "o"
    options = RestoreOptions(output_dir=str(out), dry_run=True, format="webp", suffix="_big")
    plan = plan_outputs(collect_inputs([str(photos)], recursive=False), options)
    assert {p.action for p in plan} == {"write"} and len(plan) == 5
    assert sorted(p.output.name for p in plan) == sorted(f"{p.stem}_big.webp" for p in photos.iterdir())
    assert all(p.output.parent == out and p.reason is None for p in plan)
    assert _tree(tmp_path) == before  # no folder made, no file touched


def test_a_new_folder_stats_no_input_and_each_output_once(tmp_path):
    """The inputs' identities are needed only once some output exists (it may be one of them)."""
    photos = [_photo(tmp_path / "in" / f"{name}.jpg") for name in ("a", "b", "c")]
    asked: list[Path] = []

    def identity(path: Path):
        asked.append(path)
        return None

    facts = FileFacts(identity=identity, exists=lambda path: False, writer_of=_no_writer)
    plan = plan_outputs([_item(p) for p in photos], RestoreOptions(output_dir=str(tmp_path / "o")), facts)
    assert [p.action for p in plan] == ["write"] * 3
    assert asked == [tmp_path / "o" / f"{name}.jpg" for name in ("a", "b", "c")]


def test_stdin_takes_its_format_from_its_content_and_is_never_resumed(tmp_path):
    out = tmp_path / "o"
    stdin = InputItem(STDIO, Path("stdin"))
    (planned,) = plan_outputs([stdin], RestoreOptions(output_dir=str(out)), stdin_format="jpg")
    assert planned == PlannedOutput(stdin, "write", out / "stdin.jpg")
    _photo(out / "stdin.jpg")  # from an earlier piped image: a new one is not that one
    (again,) = plan_outputs([stdin], RestoreOptions(output_dir=str(out)), stdin_format="jpg")
    assert again.action == "error" and again.reason.startswith(f"stdin: {out / 'stdin.jpg'} exists")
    assert plan_outputs([stdin], RestoreOptions(output_dir=str(out), overwrite=True), stdin_format="jpg")[0].action \
        == "write"


def test_stdout_takes_one_image_and_stdin_comes_once(tmp_path):
    photo = _photo(tmp_path / "rocket.jpg")
    (planned,) = plan_outputs([_item(photo)], RestoreOptions(output_dir=STDIO))
    assert planned == PlannedOutput(_item(photo), "write", None)
    with pytest.raises(UsageError, match="writes one image to stdout, but 2 inputs"):
        plan_outputs([_item(photo), _item(photo)], RestoreOptions(output_dir=STDIO))
    stdin = InputItem(STDIO, Path("stdin"))
    with pytest.raises(UsageError, match="only once"):
        plan_outputs([stdin, stdin], RestoreOptions(output_dir=str(tmp_path / "o")))


def test_unsafe_names_are_refused_and_an_output_outside_the_folder_is_an_error(tmp_path):
    photo = _photo(tmp_path / "rocket.jpg")
    with pytest.raises(UsageError, match="unsafe file name"):
        plan_outputs([_item(photo)], RestoreOptions(output_dir=str(tmp_path / "o"), suffix="/../../x"))
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "sub").symlink_to(tmp_path)  # an output folder whose sub-folder leads out of it
    (planned,) = plan_outputs([InputItem(str(photo), Path("sub/rocket.jpg"))],
                              RestoreOptions(output_dir=str(tmp_path / "o")))
    assert planned.action == "error" and planned.output is None and "would land outside" in planned.reason


def test_a_batch_plans_each_output_when_it_reaches_the_image(tmp_path):
    """An output that appears while the batch runs (another run finished it) is skipped, not done again: the plan
    is made image by image, not once at the start. A dry run shows it without a model."""
    photos = [_photo(tmp_path / "in" / f"{name}.jpg") for name in ("a", "b")]
    out = tmp_path / "o"

    def on_progress(event: str, payload: object) -> None:
        if event == "item" and str(payload).endswith("b.jpg"):
            _photo(out / "b.jpg")

    batch = restore_batch([str(p) for p in photos], RestoreOptions(output_dir=str(out), dry_run=True),
                          on_progress=on_progress)
    assert [(i.status, i.error) for i in batch.items] == [("planned", None), ("skipped", "output exists")]
    assert batch.items[0].out_size == (384, 256) and batch.setup is None


def test_an_unreadable_input_claims_no_output(tmp_path):
    """A missing input's error is its own: an input after it with the same output name is planned as if it were
    first, in a batch as in ``plan_outputs`` (which is given the inputs that could be read)."""
    missing, present = tmp_path / "a" / "x.jpg", _photo(tmp_path / "b" / "x.jpg")
    out = tmp_path / "o"
    batch = restore_batch([str(missing), str(present)], RestoreOptions(output_dir=str(out), dry_run=True))
    assert [i.status for i in batch.items] == ["error", "planned"] and "no such file" in batch.items[0].error
    assert batch.items[1].output == str(out / "x.jpg")


# submit names stored inputs by their relative names, with the same rule for one file named twice


def _submit(tmp_path, *inputs):
    from restorecli.jobs.submit import submit_job

    job, _ = submit_job(tmp_path / "queue", [str(p) for p in inputs], RestoreOptions(), stdin=io.BytesIO())
    return [entry["stored"] for entry in job.inputs]


def test_submit_stores_one_file_named_twice_once(tmp_path):
    photo = _photo(tmp_path / "photos" / "rocket.jpg")
    assert _submit(tmp_path, photo, tmp_path / "photos" / ".." / "photos" / "rocket.jpg", photo.parent) \
        == ["rocket.jpg"]


@pytest.mark.parametrize("second", ["x.jpg", "X.JPG"])
def test_submit_refuses_two_files_with_one_name(tmp_path, second):
    a, b = _photo(tmp_path / "a" / "x.jpg"), _photo(tmp_path / "b" / second)
    with pytest.raises(UsageError, match=f"cannot submit: {b} and {a} have the same name in one job"):
        _submit(tmp_path, a, b)
    assert not (tmp_path / "queue").exists()  # refused before the queue is made
