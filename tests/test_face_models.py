"""The face models beside GFPGAN (issue 32): CodeFormer with its fidelity weight, from spandrel-extra-arches, and
RestoreFormer, by registry name. Their networks are randomly initialised and saved in the layouts of the released
files (CodeFormer's ``codeformer.pth`` is ``{"params_ema": state_dict}``), then loaded through the same resolver and
loader as a download: the registry entry's hash is set to the random file's, since the published one rightly
refuses any file but the release."""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest
import torch

from conftest import DETECTOR, TEST_INPUTS, read_rgb
from helpers.cli import invoke as _run
from restorecli.models.integrity import sha256_of
from restorecli.models.loading import describe, read_state_dict, resolve_model_path
from restorecli.models.registry import REGISTRY

pytest.importorskip("spandrel_extra_arches", reason="spandrel-extra-arches (restorecli[codeformer], also in [test]) "
                    "is not installed: CodeFormer's architecture comes from it")

# The released codeformer.pth's network, as spandrel's own test of the real file records it: 376,450,828 bytes of
# fp32 parameters (dim_embd 512, 9 transformer layers, a 1024-entry codebook, fusion at 32, 64, 128 and 256 px)
CODEFORMER_PARAMETER_BYTES = 376_450_828


@pytest.fixture(scope="module")
def codeformer_checkpoint(tmp_path_factory):
    """CodeFormer with random weights in the released file's layout and shapes."""
    from spandrel_extra_arches.architectures.CodeFormer import CodeFormer

    torch.manual_seed(0)
    net = CodeFormer(dim_embd=512, n_head=8, n_layers=9, codebook_size=1024, latent_size=256,
                     connect_list=["32", "64", "128", "256"])
    path = tmp_path_factory.mktemp("codeformer") / "codeformer.pth"
    torch.save({"params_ema": net.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def restoreformer_checkpoint(tmp_path_factory):
    """RestoreFormer (the network of GFPGAN's release v1.3.4 RestoreFormer.pth, spandrel's default hyperparameters)
    with random weights, wrapped as GFPGAN's checkpoints are; GFPGAN's own loader reads "params_ema" or "params",
    and which of the two the release uses is not recorded here (spandrel unwraps either)."""
    from spandrel.architectures.RestoreFormer import RestoreFormer

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("restoreformer") / "RestoreFormer.pth"
    torch.save({"params_ema": RestoreFormer().state_dict()}, path)
    return path


def _controlled(monkeypatch, name, checkpoint):
    """Point registry entry ``name`` at the random ``checkpoint``'s hash: it then loads as a download would."""
    monkeypatch.setitem(REGISTRY, name, dataclasses.replace(REGISTRY[name], sha256=sha256_of(checkpoint)))


def _install(weights, name, checkpoint):
    weights.mkdir(exist_ok=True)
    (weights / REGISTRY[name].filename).symlink_to(checkpoint)


# ----------------------------------------------------------------------------- the registry


def test_face_models_are_named_with_release_files_hashes_and_licences():
    from restorecli.models.download import default_names
    from restorecli.options import RestoreOptions

    faces = {name: entry for name, entry in REGISTRY.items() if entry.kind == "face"}
    assert set(faces) == {"gfpgan-1.3", "gfpgan-1.4", "codeformer", "restoreformer"}
    codeformer, restoreformer = faces["codeformer"], faces["restoreformer"]
    assert codeformer.urls == ("https://github.com/sczhou/CodeFormer/releases/download/v0.1.0/codeformer.pth",)
    assert codeformer.sha256 == "1009e537e0c2a07d4cabce6355f53cb66767cd4b4297ec7a4a64ca4b8a5684b7"
    assert codeformer.non_commercial and "S-Lab License 1.0" in codeformer.licence and codeformer.extra == "codeformer"
    assert restoreformer.urls == ("https://github.com/TencentARC/GFPGAN/releases/download/v1.3.4/RestoreFormer.pth",)
    assert restoreformer.sha256 == "07404d446d62ca3d5ed38b1de09a947a1e77d46dbccec961a74d713a8f24ace0"
    assert all(entry.sha256 for entry in faces.values())
    # never a default: neither restore's face model nor what download-weights fetches unasked
    assert RestoreOptions().face_model == "gfpgan-1.4" and "codeformer" not in default_names()
    assert not any(entry.non_commercial for name, entry in REGISTRY.items() if name != "codeformer")


def test_codeformer_in_the_released_layout_loads_through_the_resolver(tmp_path, monkeypatch, codeformer_checkpoint):
    _install(tmp_path, "codeformer", codeformer_checkpoint)
    _controlled(monkeypatch, "codeformer", codeformer_checkpoint)
    name, path = resolve_model_path("codeformer", tmp_path, "face")
    state = read_state_dict(path)[0]
    assert list(state) == ["params_ema"]
    shapes = {k: tuple(v.shape) for k, v in state["params_ema"].items()}
    assert shapes["position_emb"] == (256, 512) and shapes["idx_pred_layer.1.weight"] == (1024, 512)
    assert shapes["quantize.embedding.weight"] == (1024, 256) and shapes["encoder.blocks.0.weight"] == (64, 3, 3, 3)
    assert {k.split(".")[1] for k in shapes if k.startswith("fuse_convs_dict.")} == {"32", "64", "128", "256"}
    assert sum(np.prod(s) for s in shapes.values()) * 4 == CODEFORMER_PARAMETER_BYTES
    descriptor = describe(state, path)
    assert (name, descriptor.architecture.id, descriptor.purpose) == ("codeformer", "CodeFormer", "FaceSR")


def test_a_codeformer_file_refused_by_the_published_hash(tmp_path, codeformer_checkpoint):
    """Without the test's own hash, the random file under the official name is refused, as a tampered one would be."""
    from restorecli.errors import UnsupportedModel

    _install(tmp_path, "codeformer", codeformer_checkpoint)
    with pytest.raises(UnsupportedModel, match="does not match the published"):
        resolve_model_path("codeformer", tmp_path, "face")


def test_restoreformer_by_name_loads_through_the_face_loader(tmp_path, monkeypatch, make_model,
                                                             restoreformer_checkpoint):
    from restorecli.models.loading import load_face_weights

    if not DETECTOR.is_file():
        pytest.skip(f"{DETECTOR} is absent (the ../shared test data is not beside the clone)")
    _install(tmp_path, "restoreformer", restoreformer_checkpoint)
    _controlled(monkeypatch, "restoreformer", restoreformer_checkpoint)
    weights = load_face_weights("restoreformer", str(DETECTOR), tmp_path)
    assert weights.restorer.architecture.id == "RestoreFormer" and weights.restorer.purpose == "FaceSR"
    from restorecli.engine.faces.enhance import FaceRestorer

    assert not FaceRestorer(weights.restorer, torch.device("cpu")).has_fidelity  # --face-fidelity does not apply
    from restorecli.pipeline import RestoreOptions, Restorer

    options = RestoreOptions(model=str(make_model(2)), weights_dir=str(tmp_path), face_enhance=True,
                             face_model="restoreformer", face_detector=str(DETECTOR))
    assert Restorer.from_options(options).setup["face_model"] == "restoreformer"  # what ran, in the summary


# ----------------------------------------------------------------------------- models and download-weights


def test_models_shows_each_face_models_licence_in_the_table(tmp_path):
    shown = _run("models", "--weights-dir", tmp_path)
    assert shown.exit_code == 0
    table = " ".join(shown.stderr.split())  # the table wraps its cells; the words stay in order
    assert "licence" in table and "S-Lab" in table and "Apache-2.0" in table
    assert ("note: codeformer's weights are under the S-Lab License 1.0 (non-commercial use only): not for "
            "commercial use") in shown.stderr
    lines = dict(line.split("\t")[:2] for line in shown.stdout.splitlines())
    assert lines["codeformer"] == "missing" and lines["restoreformer"] == "missing"
    listed = {m["name"]: m for m in json.loads(_run("models", "--weights-dir", tmp_path, "--json").stdout)["models"]}
    assert listed["codeformer"]["licence"] == "S-Lab License 1.0 (non-commercial use only)"
    assert listed["restoreformer"]["kind"] == "face" and listed["restoreformer"]["status"] == "missing"


def test_download_weights_from_checks_the_architecture_against_the_name(tmp_path, monkeypatch, codeformer_checkpoint,
                                                                       restoreformer_checkpoint, gfpgan_checkpoint):
    weights = tmp_path / "weights"
    wrong = _run("download-weights", "--from", codeformer_checkpoint, "--name", "restoreformer", "--weights-dir",
                 weights)
    assert wrong.exit_code == 3
    assert "is a CodeFormer model (1x), but 'restoreformer' is a RestoreFormer model (1x)" in wrong.stderr
    swapped = _run("download-weights", "--from", restoreformer_checkpoint, "--name", "codeformer", "--weights-dir",
                   weights)
    assert swapped.exit_code == 3 and "is a RestoreFormer model (1x), but 'codeformer' is a CodeFormer" in swapped.stderr
    gfpgan = _run("download-weights", "--from", gfpgan_checkpoint, "--name", "codeformer", "--weights-dir", weights)
    assert gfpgan.exit_code == 3 and "is a GFPGAN model (1x), but 'codeformer' is a CodeFormer" in gfpgan.stderr
    assert not (weights / "codeformer.pth").exists() and not (weights / "RestoreFormer.pth").exists()
    # the right architecture, but not the release: the published sha256 refuses it
    unreleased = _run("download-weights", "--from", codeformer_checkpoint, "--name", "codeformer", "--weights-dir",
                      weights)
    assert unreleased.exit_code == 3 and "does not match the expected 1009e537" in unreleased.stderr
    _controlled(monkeypatch, "codeformer", codeformer_checkpoint)
    imported = _run("download-weights", "--from", codeformer_checkpoint, "--name", "codeformer", "--weights-dir",
                    weights)
    assert imported.exit_code == 0, imported.stderr
    assert (weights / "codeformer.pth").read_bytes() == codeformer_checkpoint.read_bytes()
    assert "licence: codeformer's weights are under the S-Lab License 1.0 (non-commercial use only)" in imported.stderr


def test_download_weights_all_leaves_out_non_commercial_weights_unless_named(tmp_path, monkeypatch):
    import restorecli.models.download as download
    from restorecli.models.download import FetchResult

    asked = []  # download-weights imports fetch as it runs (not at the CLI's start): patched where it lives
    monkeypatch.setattr(download, "fetch", lambda name, *args: asked.append(name) or FetchResult(
        name, "failed", None, message="not fetched in this test"))
    everything = _run("download-weights", "--all", "--weights-dir", tmp_path)
    assert "codeformer" not in asked and {"gfpgan-1.3", "gfpgan-1.4", "restoreformer"} <= set(asked)
    assert "note: --all leaves out codeformer (S-Lab License 1.0 (non-commercial use only)); name it" in \
        everything.stderr
    asked.clear()
    named = _run("download-weights", "codeformer", "--weights-dir", tmp_path)
    assert asked == ["codeformer"]
    assert "licence: codeformer's weights are under the S-Lab License 1.0 (non-commercial use only)" in named.stderr


def test_codeformer_without_its_package_says_which_extra_to_install(tmp_path, monkeypatch, make_model,
                                                                     codeformer_checkpoint):
    import restorecli.models.loading as loading

    monkeypatch.setattr(loading, "extra_arches_installed", lambda: False)
    _controlled(monkeypatch, "codeformer", codeformer_checkpoint)
    imported = _run("download-weights", "--from", codeformer_checkpoint, "--name", "codeformer", "--weights-dir",
                    tmp_path / "w")
    assert imported.exit_code == 3 and "pip install 'restorecli[codeformer]'" in imported.stderr
    _install(tmp_path / "w", "codeformer", codeformer_checkpoint)
    (tmp_path / "w" / "detection_Resnet50_Final.pth").write_bytes(b"")  # present: only the package is missing
    result = _run("restore", TEST_INPUTS / "rocket.jpg", "-o", tmp_path / "o", "--model", make_model(2),
                  "--weights-dir", tmp_path / "w", "--face-enhance", "--face-model", "codeformer")
    assert result.exit_code == 3
    assert "model 'codeformer' (CodeFormer) needs the optional package spandrel-extra-arches: pip install " \
           "'restorecli[codeformer]'" in result.stderr
    assert not (tmp_path / "o").exists()


def test_face_fidelity_out_of_range_is_a_usage_error(tmp_path, make_model):
    result = _run("restore", TEST_INPUTS / "rocket.jpg", "-o", tmp_path / "o", "--model", make_model(2),
                  "--face-enhance", "--face-model", "codeformer", "--face-fidelity", "1.5")
    assert result.exit_code == 2 and "--face-fidelity" in result.stderr
    assert not (tmp_path / "o").exists()


def test_a_queued_job_keeps_its_face_model_and_fidelity(tmp_path, make_model):
    """submit takes --face-model and --face-fidelity like restore, and the job carries them to its worker."""
    from restorecli.jobs.store import JobStore

    queue = tmp_path / "queue"
    submitted = _run("submit", TEST_INPUTS / "rocket.jpg", "--queue", queue, "--model", make_model(2),
                     "--face-enhance", "--face-model", "codeformer", "--face-fidelity", "0.25", "--json")
    assert submitted.exit_code == 0, submitted.stderr
    store = JobStore(queue)
    try:
        options = store.get(json.loads(submitted.stdout)["job_id"]).options
    finally:
        store.close()
    assert (options["face_model"], options["face_fidelity"], options["face_enhance"]) == ("codeformer", 0.25, True)
    refused = _run("submit", TEST_INPUTS / "rocket.jpg", "--queue", queue, "--model", make_model(2),
                   "--face-enhance", "--face-fidelity", "-0.5")
    assert refused.exit_code == 2 and "--face-fidelity" in refused.stderr


# ----------------------------------------------------------------------------- CodeFormer end to end


@pytest.mark.slow  # 12-17 s on 2 cores: nox -s slow runs it
def test_restore_with_codeformer_end_to_end_and_its_fidelity_weight(tmp_path, monkeypatch, make_model, face_files,
                                                                    codeformer_checkpoint):
    """`restore --face-enhance --face-model codeformer` through the CLI on a photo with a face: the network is called
    with the --face-fidelity given (not spandrel's 0.5), and fidelity 0 and 1 restore the face differently while
    the frame around it is the same."""
    from spandrel_extra_arches.architectures.CodeFormer import CodeFormer

    weights, detector = face_files
    _install(weights, "codeformer", codeformer_checkpoint)
    _controlled(monkeypatch, "codeformer", codeformer_checkpoint)
    received = []
    network = CodeFormer.forward

    def forward(self, x, weight=0.5, **kwargs):
        received.append((x.shape[0], weight))
        return network(self, x, weight=weight, **kwargs)

    monkeypatch.setattr(CodeFormer, "forward", forward)
    photo = tmp_path / "portrait.png"  # the test photo in the middle of a wider grey frame
    framed = np.full((256, 256, 3), 128, np.uint8)
    framed[64:192, 64:192] = read_rgb(TEST_INPUTS / "astronaut_face.jpg")
    cv2.imwrite(str(photo), cv2.cvtColor(framed, cv2.COLOR_RGB2BGR))
    common = ["--model", make_model(2), "--weights-dir", weights, "--face-enhance", "--face-model", "codeformer",
              "--face-detector", detector, "--format", "png", "--json"]
    outputs = {}
    for fidelity in (0.0, 1.0):
        crops = tmp_path / f"crops{fidelity:g}"
        result = _run("restore", photo, "-o", tmp_path / f"w{fidelity:g}", "--face-fidelity", fidelity,
                      "--save-faces", crops, *common)
        assert result.exit_code == 0, result.stderr
        item, summary = (json.loads(line) for line in result.stdout.splitlines())
        assert item["status"] == "ok" and item["faces"] == 1 and summary["face_model"] == "codeformer"
        assert received[-1] == (1, fidelity)
        assert sorted(p.name for p in crops.iterdir()) == ["portrait_face0_aligned.png", "portrait_face0_restored.png"]
        outputs[fidelity] = read_rgb(tmp_path / f"w{fidelity:g}" / "portrait.png").astype(int)
    assert len(received) == 2
    low, high = outputs[0.0], outputs[1.0]
    assert low.shape == high.shape == (512, 512, 3)
    differs = np.abs(low - high).max(axis=2) > 2
    ys, xs = np.nonzero(differs)
    assert differs.sum() > 1000 and 180 < xs.mean() < 300 and 160 < ys.mean() < 300  # on the face
    assert not differs[:, :90].any() and not differs[-110:].any()  # the frame beyond the aligned square is alike
    restored = [read_rgb(tmp_path / f"crops{f:g}" / "portrait_face0_restored.png").astype(int) for f in (0.0, 1.0)]
    assert np.abs(restored[0] - restored[1]).mean() > 1


def test_restore_with_restoreformer_by_name_on_a_grey_photo(tmp_path, monkeypatch, make_model, face_files,
                                                            restoreformer_checkpoint):
    """`--face-model restoreformer` through the CLI, with what the face stage does for every model: a grey photo
    gets grey faces, --save-faces writes the crops (--face-weight, the same code for every model, is tested with
    GFPGAN in test_faces.py)."""
    weights, detector = face_files
    _install(weights, "restoreformer", restoreformer_checkpoint)
    _controlled(monkeypatch, "restoreformer", restoreformer_checkpoint)
    grey = tmp_path / "grey.png"
    cv2.imwrite(str(grey), cv2.cvtColor(read_rgb(TEST_INPUTS / "astronaut_face.jpg"), cv2.COLOR_RGB2GRAY))
    common = ["--model", make_model(2), "--weights-dir", weights, "--face-enhance", "--face-model", "restoreformer",
              "--face-detector", detector, "--json"]
    plain = _run("restore", grey, "-o", tmp_path / "plain", "--model", make_model(2))
    result = _run("restore", grey, "-o", tmp_path / "o", "--save-faces", tmp_path / "crops", *common)
    assert plain.exit_code == 0 and result.exit_code == 0, result.stderr
    item, summary = (json.loads(line) for line in result.stdout.splitlines())
    assert item["faces"] == 1 and summary["face_model"] == "restoreformer"
    before = cv2.imread(str(tmp_path / "plain" / "grey.png"), cv2.IMREAD_UNCHANGED).astype(int)
    after = cv2.imread(str(tmp_path / "o" / "grey.png"), cv2.IMREAD_UNCHANGED).astype(int)
    assert after.ndim == 2 and after.shape == before.shape == (256, 256)
    assert np.abs(after - before).max() > 8  # the face was restored
    assert len(list((tmp_path / "crops").iterdir())) == 2
