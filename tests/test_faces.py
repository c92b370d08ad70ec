"""Face restoration: the real detector on real photos, alignment and paste-back geometry, and `--face-enhance`
through the CLI with GFPGAN checkpoints of random weights saved in the official layout."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data
from hypothesis import given, settings
from hypothesis import strategies as st
import torch

from conftest import DETECTOR, TEST_INPUTS, read_rgb
from helpers.cli import invoke, json_lines
from restorecli.engine.faces.align import FFHQ_TEMPLATE_512, alignment, crop_face, footprint, invert
from restorecli.engine.faces.detector import AnchorConfig, FaceDetector
from restorecli.engine.faces.detector import Face
from restorecli.engine.faces.enhance import (FaceOptions, FaceRows, enhance_faces, plan_faces, restore_planned_faces,
                                             select_faces)
from restorecli.engine.faces.paste import paste_face

TEST_ANCHORS = AnchorConfig(min_sizes=((10, 20), (32, 64), (128, 256)))  # what this detector was trained with

needs_detector = pytest.mark.skipif(not DETECTOR.is_file(),
                                    reason=f"{DETECTOR} is absent (the ../shared test data is not beside the clone)")


@pytest.fixture(scope="module")
def detector():
    if not DETECTOR.is_file():
        pytest.skip(f"{DETECTOR} is absent (the ../shared test data is not beside the clone)")
    state = torch.load(DETECTOR, map_location="cpu", weights_only=True)
    return FaceDetector.from_state_dict(state, TEST_ANCHORS, torch.device("cpu"))


# ----------------------------------------------------------------------------- detection


def test_detector_finds_the_astronaut_with_ordered_landmarks(detector):
    faces = detector.detect(skimage.data.astronaut(), threshold=0.99)
    assert faces, "no face found"
    top = faces[0]
    assert top.score > 0.99
    np.testing.assert_allclose(top.box, [180, 63, 257, 170], atol=6)
    x1, y1, x2, y2 = top.box
    left_eye, right_eye, nose, left_mouth, right_mouth = top.landmarks
    margin = 0.05 * (x2 - x1)  # this detector puts her left eye 3 px left of its own box (see the test data README)
    for x, y in top.landmarks:
        assert x1 - margin <= x <= x2 + margin and y1 - margin <= y <= y2 + margin
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(left_mouth[1], right_mouth[1])
    assert left_eye[0] < right_eye[0] and left_mouth[0] < right_mouth[0]


def test_large_images_are_searched_downscaled_and_answered_in_their_own_pixels(detector):
    big = cv2.resize(skimage.data.astronaut(), (1536, 1536), interpolation=cv2.INTER_CUBIC)
    assert detector.max_side < 1536  # so this image is searched on a downscaled copy
    faces = detector.detect(big, threshold=0.9)
    expected = np.array([180, 63, 257, 170]) * 3
    best = min(faces, key=lambda f: np.abs(f.box - expected).max())
    np.testing.assert_allclose(best.box, expected, atol=30)  # 10 px at the original scale
    assert best.score > 0.99
    # what the detector sees on the downscaled copy (here rounded to 8 bits), mapped back
    small = cv2.resize(big, (detector.max_side, detector.max_side), interpolation=cv2.INTER_AREA)
    seen = min(detector.detect(small, threshold=0.9), key=lambda f: np.abs(f.box - expected / 1.2).max())
    np.testing.assert_allclose(best.box, seen.box * 1536 / detector.max_side, atol=1.0)
    np.testing.assert_allclose(best.landmarks, seen.landmarks * 1536 / detector.max_side, atol=1.0)


def test_default_anchors_are_the_released_retinaface_ones():
    assert AnchorConfig().min_sizes == ((16, 32), (64, 128), (256, 512))


def test_selection_options(detector):
    strip = read_rgb(TEST_INPUTS / "astronaut_face.jpg")
    two = np.concatenate([strip, np.full((128, 64, 3), 128, np.uint8), strip], axis=1)
    faces = detector.detect(two, threshold=0.9)
    assert len(faces) == 2
    assert len(select_faces(faces, 320, 128, FaceOptions(max_faces=1))) == 1
    centre = select_faces(faces, 320, 128, FaceOptions(only_center=True))
    assert len(centre) == 1
    assert len(select_faces(faces, 320, 128, FaceOptions(min_size=500))) == 0


# ----------------------------------------------------------------------------- geometry


def test_alignment_recovers_a_known_similarity_and_warps_back_within_a_pixel():
    angle, scale, shift = 0.3, 0.45, np.array([310.0, 140.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    landmarks = FFHQ_TEMPLATE_512 @ rot.T + shift  # a face placed by a known similarity
    matrix = alignment(landmarks)
    mapped = landmarks @ matrix[:, :2].T + matrix[:, 2]
    np.testing.assert_allclose(mapped, FFHQ_TEMPLATE_512, atol=1e-6)
    back = invert(matrix)
    np.testing.assert_allclose(FFHQ_TEMPLATE_512 @ back[:, :2].T + back[:, 2], landmarks, atol=1e-6)
    # pixels: the crop, warped back, lands where it came from (no shift above a pixel)
    image = skimage.data.astronaut()
    crop = crop_face(image, matrix)
    restored = cv2.warpAffine(crop, back, (512, 512), flags=cv2.INTER_CUBIC)
    x0, y0, x1, y1 = footprint(matrix, 512, 512)
    inner = (slice(y0 + 40, y1 - 40), slice(x0 + 40, x1 - 40))
    original = image.astype(np.float32)[inner] / 255
    (dx, dy), _ = cv2.phaseCorrelate(cv2.cvtColor(original, cv2.COLOR_RGB2GRAY),
                                     cv2.cvtColor(restored[inner], cv2.COLOR_RGB2GRAY))
    assert abs(dx) < 1 and abs(dy) < 1


def _upscaled_astronaut(factor):
    return cv2.resize(skimage.data.astronaut(), None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)


@pytest.mark.parametrize("factor", [1, 4])  # at 4x the face covers about 1000 px, larger than the 512 crop
def test_identity_restorer_leaves_the_background_and_no_seam(detector, factor):
    source = skimage.data.astronaut()
    canvas = _upscaled_astronaut(factor)
    background = canvas.copy()
    report = enhance_faces(canvas, source, detector, lambda crops: crops, FaceOptions(threshold=0.99, max_faces=1))
    assert len(report.faces) == 1
    assert np.abs(canvas.astype(int) - background.astype(int)).max() <= 1

    # no seam: on a flat grey canvas a constant change fades in over the feathered edge (0.1 of the aligned
    # square, eased with smoothstep, whose steepest slope is 1.5 x change / ramp width); nowhere does it jump
    # by more than that (plus rounding), and it is exactly zero outside the face's footprint
    flat = np.full_like(background, 100)
    matrix = alignment(report.faces[0].landmarks * factor)
    crops = np.full((512, 512, 3), 100 / 255, np.float32)
    assert paste_face(flat, crops + 0.2, crops, matrix)
    change = flat.astype(np.float32)[:, :, 0] - 100
    assert change.max() == 51  # 0.2 of full scale, in the middle of the face
    steps = max(np.abs(np.diff(change, axis=0)).max(), np.abs(np.diff(change, axis=1)).max())
    ramp_px = 0.1 * 512 / np.sqrt(abs(np.linalg.det(matrix[:, :2])))
    assert steps <= 1.5 * 51 / ramp_px + 1
    x0, y0, x1, y1 = footprint(matrix, flat.shape[1], flat.shape[0])
    outside = np.ones_like(change, bool)
    outside[y0:y1, x0:x1] = False
    assert not change[outside].any()


def test_paste_touches_only_the_face_region_and_handles_the_border():
    canvas = np.full((300, 400, 3), 100, np.uint8)
    landmarks = FFHQ_TEMPLATE_512 * 0.3 + np.array([-40.0, 150.0])  # face partly off the left and bottom edges
    matrix = alignment(landmarks)
    face = np.ones((512, 512, 3), np.float32)
    original = np.full((512, 512, 3), 100 / 255, np.float32)
    assert paste_face(canvas, face, original, matrix)
    changed = np.argwhere(np.abs(canvas.astype(int) - 100).max(axis=2) > 0)
    x0, y0, x1, y1 = footprint(matrix, 400, 300)
    assert changed[:, 1].min() >= x0 and changed[:, 1].max() < x1 and changed[:, 0].min() >= y0
    assert canvas.max() == 255  # the middle of the face was fully replaced
    # entirely outside: reported, nothing changed
    outside = alignment(FFHQ_TEMPLATE_512 * 0.3 + np.array([1000.0, 1000.0]))
    assert not paste_face(canvas, face, original, outside)


def test_grey_canvas_gets_a_grey_change_and_sixteen_bit_is_kept():
    grey = np.full((200, 200, 1), 30000, np.uint16)
    matrix = alignment(FFHQ_TEMPLATE_512 * 0.35 + 10)
    tinted = np.zeros((512, 512, 3), np.float32)
    tinted[..., 0] = 1.0  # a red change must arrive as its luminance
    assert paste_face(grey, tinted, np.zeros_like(tinted), matrix)
    assert grey.dtype == np.uint16 and grey.shape == (200, 200, 1)
    assert grey.max() == 30000 + round(0.299 * 65535)


# ----------------------------------------------------------------------------- through the CLI


class _Found:
    """A detector that finds the faces it is given."""

    def __init__(self, faces):
        self.faces = faces

    def detect(self, rgb, threshold):
        return self.faces


def _face_at(x: float, y: float, size: float, turn: float) -> Face:
    """A face whose five landmarks sit as in the FFHQ template, ``size`` px wide, centred at (x, y), turned."""
    c, s = np.cos(turn), np.sin(turn)
    points = (FFHQ_TEMPLATE_512 / 512 - 0.5) * size @ np.array([[c, s], [-s, c]]) + (x, y)
    return Face(np.array([x - size / 2, y - size / 2, x + size / 2, y + size / 2]), 0.99, points)


@settings(max_examples=40, deadline=None)
@given(height=st.integers(24, 160), width=st.integers(24, 160), channels=st.sampled_from([1, 3, 4]),
       dtype=st.sampled_from([np.uint8, np.uint16]), seed=st.integers(0, 2**16),
       faces=st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1), st.floats(4, 60), st.floats(-0.6, 0.6)),
                      min_size=1, max_size=3),
       cuts=st.lists(st.integers(0, 640), max_size=6))
def test_faces_restored_strip_by_strip_equal_the_whole_array(height, width, channels, dtype, seed, faces, cuts):
    """An output written a strip at a time holds only the rows its faces span: the rows each face's crop reads
    (its aligned square, the sampler's reach, and what the mirrored border brings in near an edge) are all in
    the band, so the crops equal those taken from the whole output, and the file equals the whole-array path's."""
    rng = np.random.default_rng(seed)
    source = rng.integers(0, 255, (height, width, min(channels, 3)), dtype=np.uint8)
    out_w, out_h = 4 * width, 4 * height
    maxval = np.iinfo(dtype).max
    canvas = rng.integers(0, maxval, (out_h, out_w, channels), dtype=dtype, endpoint=True)
    colour = min(channels, 3)
    found = [_face_at(fx * width, fy * height, size, turn) for fx, fy, size, turn in faces]
    plan = plan_faces(source, out_w, out_h, _Found(found), FaceOptions())

    def restorer(crops):  # not symmetric, so a crop taken from the wrong place would show
        return np.clip(0.6 * crops + 0.3 * crops[:, ::-1, :, ::-1], 0.0, 1.0)

    colour_planes = np.ascontiguousarray(canvas[:, :, :colour])
    outside_spoiled = colour_planes.copy()  # every row the faces do not span, overwritten
    outside_spoiled[: plan.top] = maxval - outside_spoiled[: plan.top]
    outside_spoiled[plan.bottom :] = maxval - outside_spoiled[plan.bottom :]
    for matrix in plan.matrices:  # the band is enough: no crop reads a row outside it
        np.testing.assert_array_equal(crop_face(outside_spoiled, matrix), crop_face(colour_planes, matrix))
    whole = canvas.copy()
    restore_planned_faces(whole[plan.top : plan.bottom, :, :colour], plan, restorer, FaceOptions())
    assert not np.array_equal(whole, canvas)  # the faces did change something

    class Rows:
        def __init__(self):
            self.rows = []

        def write(self, rows):
            self.rows.append(rows.copy())

        def restart(self):
            self.rows = []

    sink = Rows()
    streamed = FaceRows(sink, plan, colour, lambda band: restore_planned_faces(band, plan, restorer, FaceOptions()))
    bounds = sorted({0, out_h, *(c for c in cuts if c < out_h)})
    buffer = np.empty_like(canvas)
    for y0, y1 in zip(bounds, bounds[1:]):  # through one reused buffer, as the engine hands rows over
        buffer[: y1 - y0] = canvas[y0:y1]
        streamed.write(buffer[: y1 - y0])
        buffer[:] = 0
    np.testing.assert_array_equal(np.concatenate(sink.rows), whole)
    assert max(len(r) for r in sink.rows) <= max(plan.bottom - plan.top, *(b - a for a, b in zip(bounds, bounds[1:])))


def test_an_output_with_faces_is_written_a_strip_at_a_time(tmp_path, make_model, face_files, monkeypatch):
    """With --face-enhance the output still goes to its file as the tiles finish (holding only the rows the
    faces span until they are restored), with the bytes of the whole-array path."""
    import restorecli.pipeline.runner as pipeline
    from restorecli.pipeline import RestoreOptions, Restorer

    weights, detector_path = face_files
    model = make_model(2)
    photo = tmp_path / "framed.png"  # the face in the middle of a taller frame: rows above and below pass through
    framed = np.full((320, 160, 3), 128, np.uint8)
    framed[96:224, 16:144] = read_rgb(TEST_INPUTS / "astronaut_face.jpg")
    cv2.imwrite(str(photo), cv2.cvtColor(framed, cv2.COLOR_RGB2BGR))
    streamed = []
    real = pipeline.enhance_rows
    monkeypatch.setattr(pipeline, "enhance_rows", lambda *a, **k: streamed.append(a[3]) or real(*a, **k))
    args = ["--model", model, "--weights-dir", weights, "--face-model", "gfpgan-1.3", "--face-detector",
            detector_path, "--face-enhance", "--tile", "32", "--json"]
    result = _restore(photo, "-o", tmp_path / "o", *args)
    assert result.exit_code == 0, result.stderr
    assert _items(result)[0]["faces"] == 1
    (sink,) = streamed
    assert isinstance(sink, FaceRows) and 0 < sink.plan.top < sink.plan.bottom < 640
    options = RestoreOptions(model=str(model), weights_dir=str(weights), face_enhance=True, face_model="gfpgan-1.3",
                             face_detector=str(detector_path), tile=32, format="png")
    whole = Restorer.from_options(options).restore_bytes(photo.read_bytes(), photo.name, options, "png")
    assert (tmp_path / "o" / "framed.png").read_bytes() == whole.data and whole.faces == 1


def test_the_next_images_faces_are_found_while_the_model_runs(tmp_path, make_model, face_files, monkeypatch):
    """Face detection is part of reading ahead: image 2's faces are looked for on the reader thread while image 1
    is in the model (which waits for it here: without the overlap it would wait in vain)."""
    import threading

    import restorecli.pipeline.runner as pipeline
    from restorecli.engine.faces.enhance import FaceStage
    from restorecli.pipeline import RestoreOptions, restore_batch

    weights, detector_path = face_files
    photos = []
    for name in ("a", "b"):
        framed = np.full((192, 160, 3), 128, np.uint8)
        framed[32:160, 16:144] = read_rgb(TEST_INPUTS / "astronaut_face.jpg")
        photos.append(tmp_path / f"{name}.png")
        cv2.imwrite(str(photos[-1]), cv2.cvtColor(framed, cv2.COLOR_RGB2BGR))
    detecting, threads = threading.Event(), []
    real_plan, real_rows = FaceStage.plan, pipeline.enhance_rows

    def plan(self, source, size, options):
        threads.append(threading.current_thread().name)
        if len(threads) == 2:
            detecting.set()
        return real_plan(self, source, size, options)

    def model(*args):
        assert detecting.is_set() or detecting.wait(60), "image 2's faces were not looked for during image 1"
        return real_rows(*args)

    monkeypatch.setattr(FaceStage, "plan", plan)
    monkeypatch.setattr(pipeline, "enhance_rows", model)
    options = RestoreOptions(model=str(make_model(2)), weights_dir=str(weights), face_enhance=True,
                             face_model="gfpgan-1.3", face_detector=str(detector_path), output_dir=str(tmp_path / "o"))
    batch = restore_batch([str(p) for p in photos], options)
    assert [(i.status, i.faces) for i in batch.items] == [("ok", 1), ("ok", 1)]
    assert len(threads) == 2 and all(name.startswith("restorecli-read") for name in threads)


def _restore(*args):
    return invoke("restore", *args)


def _items(result):
    return json_lines(result)


@pytest.mark.slow  # 15 s on 2 cores (GFPGAN's 512-pixel face); test_faces' other end-to-end runs stay by default
def test_face_enhance_end_to_end_with_gfpgan_in_the_official_layout(tmp_path, make_model, face_files):
    weights, detector_path = face_files
    model = make_model(2)
    photo = tmp_path / "astronaut_face.png"  # the test photo in the middle of a wider grey frame
    framed = np.full((256, 256, 3), 128, np.uint8)
    framed[64:192, 64:192] = read_rgb(TEST_INPUTS / "astronaut_face.jpg")
    cv2.imwrite(str(photo), cv2.cvtColor(framed, cv2.COLOR_RGB2BGR))
    common = ["--model", model, "--weights-dir", weights, "--face-model", "gfpgan-1.3",
              "--face-detector", detector_path, "--json", "--format", "png"]
    plain = _restore(photo, "-o", tmp_path / "plain", "--model", model, "--format", "png")
    assert plain.exit_code == 0
    faces_dir = tmp_path / "crops"
    result = _restore(photo, "-o", tmp_path / "faces", "--face-enhance", "--save-faces", faces_dir, *common)
    assert result.exit_code == 0, result.stderr
    item, summary = _items(result)
    assert item["faces"] == 1 and summary["faces"] == 1
    before = read_rgb(tmp_path / "plain" / "astronaut_face.png").astype(int)
    after = read_rgb(tmp_path / "faces" / "astronaut_face.png").astype(int)
    assert after.shape == before.shape == (512, 512, 3)
    changed = np.abs(after - before).max(axis=2) > 8
    ys, xs = np.nonzero(changed)
    assert changed.any() and 200 < xs.mean() < 300 and 180 < ys.mean() < 300  # on the face (centre x 234, y 214)
    # the aligned square spans about 260 px around the face; the frame beyond it is left alone
    assert not changed[:, :90].any() and not changed[:, -90:].any() and not changed[-110:].any()
    saved = sorted(p.name for p in faces_dir.iterdir())
    assert saved == ["astronaut_face_face0_aligned.png", "astronaut_face_face0_restored.png"]
    assert read_rgb(faces_dir / saved[0]).shape == (512, 512, 3)

    none = _restore(photo, "-o", tmp_path / "w0", "--face-enhance", "--face-weight", "0", *common)
    assert none.exit_code == 0
    assert np.abs(read_rgb(tmp_path / "w0" / "astronaut_face.png").astype(int) - before).max() <= 1
    half = _restore(photo, "-o", tmp_path / "w5", "--face-enhance", "--face-weight", "0.5", *common)
    assert half.exit_code == 0
    middle = read_rgb(tmp_path / "w5" / "astronaut_face.png").astype(int)
    assert np.abs(middle - before).mean() == pytest.approx(np.abs(after - before).mean() / 2, rel=0.1)


@pytest.mark.slow  # 15 s on 2 cores (three faces through GFPGAN)
def test_v14_checkpoint_loads_by_path_and_faces_are_batched_in_one_call(tmp_path, make_model, face_files,
                                                                        gfpgan_checkpoint, monkeypatch):
    weights, detector_path = face_files
    v14 = tmp_path / "GFPGANv1.4-random.pth"
    v14.symlink_to(gfpgan_checkpoint)
    strip = read_rgb(TEST_INPUTS / "astronaut_face.jpg")
    two = tmp_path / "two.png"
    cv2.imwrite(str(two), cv2.cvtColor(np.concatenate([strip, np.full((128, 64, 3), 128, np.uint8), strip], 1),
                                       cv2.COLOR_RGB2BGR))
    from restorecli.engine.faces import enhance as face_engine

    calls = []
    original = face_engine.FaceRestorer.__call__
    monkeypatch.setattr(face_engine.FaceRestorer, "__call__",
                        lambda self, crops: calls.append(len(crops)) or original(self, crops))
    args = ["--model", make_model(2), "--weights-dir", weights, "--face-model", v14, "--face-detector", detector_path,
            "--face-enhance", "--json"]
    result = _restore(two, "-o", tmp_path / "both", *args)
    assert result.exit_code == 0, result.stderr
    assert _items(result)[0]["faces"] == 2 and calls == [2]
    one = _restore(two, "-o", tmp_path / "one", "--max-faces", "1", *args)
    assert _items(one)[0]["faces"] == 1
    centre = _restore(two, "-o", tmp_path / "centre", "--only-center-face", *args)
    assert _items(centre)[0]["faces"] == 1


def test_grey_in_grey_out_with_faces(tmp_path, make_model, face_files):
    weights, detector_path = face_files
    grey = tmp_path / "grey.png"
    cv2.imwrite(str(grey), cv2.cvtColor(read_rgb(TEST_INPUTS / "astronaut_face.jpg"), cv2.COLOR_RGB2GRAY))
    result = _restore(grey, "-o", tmp_path / "o", "--model", make_model(2), "--weights-dir", weights,
                      "--face-model", "gfpgan-1.3", "--face-detector", detector_path, "--face-enhance", "--json")
    assert result.exit_code == 0, result.stderr
    assert _items(result)[0]["faces"] == 1
    out = cv2.imread(str(tmp_path / "o" / "grey.png"), cv2.IMREAD_UNCHANGED)
    assert out.ndim == 2 and out.shape == (256, 256)


def test_no_face_means_zero_faces(tmp_path, make_model, face_files):
    weights, detector_path = face_files
    result = _restore(TEST_INPUTS / "rocket.jpg", "-o", tmp_path / "o", "--model", make_model(2), "--weights-dir",
                      weights, "--face-model", "gfpgan-1.3", "--face-detector", detector_path, "--face-enhance",
                      "--json")
    assert result.exit_code == 0
    assert _items(result)[0]["faces"] == 0


def test_missing_face_weights_exit_3_before_any_image(tmp_path, make_model):
    result = _restore(TEST_INPUTS / "rocket.jpg", "-o", tmp_path / "o", "--model", make_model(2),
                      "--weights-dir", tmp_path / "empty", "--face-enhance")
    assert result.exit_code == 3
    assert "restorecli download-weights gfpgan-1.4 retinaface-resnet50" in result.stderr
    assert not (tmp_path / "o").exists()


def test_resnet50_retinaface_checkpoints_load_with_a_module_prefix(tmp_path):
    """The default detector's layout (facexlib's detection_Resnet50_Final.pth), with random weights."""
    from restorecli.engine.faces.detector import RetinaFace

    torch.manual_seed(0)
    state = {f"module.{k}": v for k, v in RetinaFace("resnet50").state_dict().items()}
    detector = FaceDetector.from_state_dict(state, AnchorConfig(), torch.device("cpu"))
    faces = detector.detect(np.zeros((64, 80, 3), np.uint8), threshold=0.0)
    assert all(f.landmarks.shape == (5, 2) and f.box.shape == (4,) for f in faces)
    with pytest.raises(Exception, match="not a RetinaFace checkpoint"):
        FaceDetector.from_state_dict({"conv.weight": torch.zeros(1)}, AnchorConfig(), torch.device("cpu"))


def test_parsenet_layout_and_masks():
    """ParseNet in the layout of facexlib's parsing_parsenet.pth (random weights): soft masks with no edge."""
    from restorecli.engine.faces.parsing import FaceParser, ParseNet

    torch.manual_seed(0)
    state = ParseNet().state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert shapes["encoder.0.conv2d.weight"] == (64, 3, 3, 3)
    assert shapes["encoder.1.shortcut_func.conv2d.weight"] == (128, 64, 3, 3)
    assert shapes["encoder.4.conv1.conv2d.weight"] == (256, 256, 3, 3)
    assert shapes["encoder.1.conv1.norm.norm.running_mean"] == (128,)
    assert shapes["body.9.conv2.conv2d.weight"] == (256, 256, 3, 3)
    assert shapes["decoder.2.shortcut_func.conv2d.weight"] == (128, 256, 3, 3)
    assert shapes["out_mask_conv.conv2d.weight"] == (19, 64, 3, 3) and "out_img_conv.conv2d.bias" in shapes
    parser = FaceParser.from_state_dict({f"module.{k}": v for k, v in state.items()}, torch.device("cpu"))
    faces = np.random.default_rng(0).random((2, 512, 512, 3), dtype=np.float32)
    masks = parser.masks(faces)
    assert masks.shape == (2, 512, 512) and masks.min() >= 0 and masks.max() <= 1
    assert masks[:, 0, :].max() == 0 and masks[:, :, -1].max() == 0  # zero at the square's edge: no seam
    with pytest.raises(Exception, match="not a ParseNet checkpoint"):
        FaceParser.from_state_dict({"x": torch.zeros(1)}, torch.device("cpu"))


def test_parsenet_mask_is_used_when_installed(tmp_path, make_model, face_files):
    from restorecli.engine.faces.parsing import ParseNet

    weights, detector_path = face_files
    model = make_model(2)
    args = ["--model", model, "--weights-dir", weights, "--face-model", "gfpgan-1.3", "--face-detector",
            detector_path, "--face-enhance", "--json"]
    photo = TEST_INPUTS / "astronaut_face.jpg"
    plain = _restore(photo, "-o", tmp_path / "square", *args)
    torch.manual_seed(1)
    torch.save(ParseNet().state_dict(), weights / "parsing_parsenet.pth")
    parsed = _restore(photo, "-o", tmp_path / "parsed", *args)
    assert plain.exit_code == parsed.exit_code == 0, parsed.stderr
    assert _items(parsed)[0]["faces"] == 1
    a = read_rgb(tmp_path / "square" / "astronaut_face.jpg").astype(int)
    b = read_rgb(tmp_path / "parsed" / "astronaut_face.jpg").astype(int)
    assert np.abs(a - b).mean() > 0.5  # a different mask, so a different paste


def test_restoreformer_plus_plus_checkpoints_work_as_face_models(tmp_path, make_model, face_files):
    """Any face model spandrel loads is accepted by path; RestoreFormer++ here, with random weights."""
    from spandrel.architectures.RestoreFormer import RestoreFormer

    weights, detector_path = face_files
    torch.manual_seed(0)
    checkpoint = tmp_path / "RestoreFormerPlusPlus.pth"
    torch.save({"params_ema": RestoreFormer().state_dict()}, checkpoint)
    result = _restore(TEST_INPUTS / "astronaut_face.jpg", "-o", tmp_path / "o", "--model", make_model(2),
                      "--weights-dir", weights, "--face-model", checkpoint, "--face-detector", detector_path,
                      "--face-enhance", "--json")
    assert result.exit_code == 0, result.stderr
    assert _items(result)[0]["faces"] == 1
    wrong = _restore(TEST_INPUTS / "astronaut_face.jpg", "-o", tmp_path / "x", "--model", make_model(2),
                     "--weights-dir", weights, "--face-model", make_model(2), "--face-detector", detector_path,
                     "--face-enhance")
    assert wrong.exit_code == 3 and "not a face restorer" in wrong.stderr


def test_save_faces_into_a_file_is_a_usage_error_before_any_image(tmp_path, make_model, face_files):
    weights, detector_path = face_files
    taken = tmp_path / "notes.txt"
    taken.write_text("keep me")
    result = _restore(TEST_INPUTS / "astronaut_face.jpg", "-o", tmp_path / "o", "--model", make_model(2),
                      "--weights-dir", weights, "--face-model", "gfpgan-1.3", "--face-detector", detector_path,
                      "--face-enhance", "--save-faces", taken)
    assert result.exit_code == 2 and f"--save-faces {taken}: is a file, not a folder" in result.stderr
    assert not (tmp_path / "o").exists() and taken.read_text() == "keep me"


class _Recorder(torch.nn.Module):
    """A stand-in network that returns its input and notes each call's batch size."""

    def __init__(self, dtype=torch.float32, classes: int | None = None):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1, dtype=dtype))
        self.classes, self.calls = classes, []

    def forward(self, x):
        self.calls.append(x.shape[0])
        if self.classes:  # a parser: class scores, the face class (1) winning
            return torch.nn.functional.one_hot(torch.ones_like(x[:, 0], dtype=torch.long), self.classes)\
                .permute(0, 3, 1, 2).float()
        return x * self.weight, None


def test_many_faces_are_restored_in_calls_that_fit_memory(monkeypatch):
    """A crowd photo's faces at about 0.7 GB each in fp32 would need many GB in one call: they go in as many a call
    as the memory budget holds, in order, with the same result."""
    import restorecli.engine.device as device
    from restorecli.engine.faces.enhance import FaceRestorer
    from restorecli.engine.faces.parsing import FaceParser

    class Descriptor:
        def __init__(self, model):
            self.model = model

        def to(self, _device):
            return self

        def eval(self):
            return self

    monkeypatch.setattr(device, "available_memory", lambda _device: 3 * (768 << 20))  # three fp32 faces
    crops = np.random.default_rng(0).random((7, 16, 16, 3)).astype(np.float32)
    for dtype, calls in ((torch.float32, [3, 3, 1]), (torch.float16, [6, 1])):  # half precision: twice as many
        model = _Recorder(dtype)
        restored = FaceRestorer(Descriptor(model), torch.device("cpu"))(crops)
        assert model.calls == calls
        np.testing.assert_allclose(restored, crops, atol=2e-3)
    parser_net = _Recorder(classes=19)
    masks = FaceParser(parser_net, torch.device("cpu")).masks(crops)
    assert parser_net.calls == [3, 3, 1] and masks.shape == (7, 16, 16)
