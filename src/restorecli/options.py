"""Every restore option, declared once: its name, type, default, help text, how the command line spells it, and
whether it changes the loaded models.

The command line (``restore``, ``submit``), the queue worker's model cache and the server's form fields are all
derived from ``RestoreOptions`` below: adding an option means one field here plus the engine code that reads it.
Imports nothing heavy, so commands that run no model can use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Literal

from .errors import UsageError
from .images.formats import DEFAULT_MAX_PIXELS, OUTPUT_FORMATS
from .models.presets import PRESET_NAMES, preset_values
from .models.registry import DEFAULT_MODEL

# The choices of the options that take one of a few words, checked by ``check_choice`` so that a wrong one reads
# like restorecli's other usage errors and lists what may be given.
FORMATS = ("same", *OUTPUT_FORMATS)  # the format registry's, and the input's own
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
# engine.backends.choice.BACKEND_CHOICES, spelt here to import nothing heavy
BACKENDS = ("auto", "torch", "ncnn", "openvino")
ALPHAS = ("model", "resize")
COLORIZE_MODES = ("never", "auto", "always")  # engine.colour.ColorizeMode, spelt here to import nothing heavy


def check_choice(option: str, value: str, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``, else a usage error naming the option and listing them."""
    if value not in choices:
        raise UsageError(f"{option} {value!r} is not one of {', '.join(choices)}")
    return value


def model_chain(model: str) -> tuple[str, ...]:
    """The models ``--model`` names, in the order they run: one name or path, or several joined by commas (``A,B``:
    ``--model A --model B``, ``--chain A,B``). A path that exists is one model, commas and all."""
    if "," not in model or Path(model).exists():
        return (model,)
    return tuple(part.strip() for part in model.split(","))


def parse_model(value: str) -> str:
    """``--model``'s text with the spaces around a chain's names dropped; ``UsageError`` for an empty name."""
    chain = model_chain(value)
    if not all(chain):
        raise UsageError(f"--model '{value}': a chain's models are names or paths joined by commas, one empty here")
    return ",".join(chain)


def parse_tile(value: str | int | None) -> int | None:
    """``auto`` -> None, ``0`` -> whole image, ``N`` -> N x N tiles (an int or None is taken as it is)."""
    if value is None or isinstance(value, int):
        tile = value
    elif value.strip().lower() == "auto":
        return None
    else:
        try:
            tile = int(value)
        except ValueError:
            raise UsageError(f"--tile '{value}' is not auto, 0 or a positive number of pixels") from None
    if tile is not None and (tile < 0 or 0 < tile < 8):
        raise UsageError(f"--tile {tile}: use 0 (whole image) or at least 8 pixels")
    return tile


def parse_frames(value: str | None) -> str | None:
    """``--frames A:B`` checked (A and B whole numbers, A < B; either may be left out) and kept as text."""
    if value is None:
        return None
    start, colon, stop = value.strip().partition(":")
    try:
        first, last = int(start or 0), int(stop) if stop else None
    except ValueError:
        first = last = -1
    if not colon or first < 0 or (last is not None and last <= first):
        raise UsageError(f"--frames '{value}' is not A:B, frames A to B (from 0, B excluded and above A; A: or :B)")
    return f"{first}:{'' if last is None else last}"


def parse_time(value: str | None, flag: str = "--start") -> float | None:
    """A time given as seconds (``90``, ``2.5``) or ``[HH:]MM:SS[.ss]``, in seconds; ``UsageError`` naming ``flag``
    for anything else or a negative time."""
    if value is None:
        return None
    value = str(value)  # a stored job's value, a number already, reads the same
    parts = value.strip().split(":")
    try:
        if len(parts) > 3 or any(part.strip() == "" for part in parts):
            raise ValueError
        seconds = 0.0
        for part in parts:
            seconds = seconds * 60 + float(part)
        if seconds < 0 or seconds != seconds or seconds == float("inf") or any(float(p) >= 60 for p in parts[1:]):
            raise ValueError
    except ValueError:
        raise UsageError(f"{flag} '{value}' is not a time: give seconds (90, 2.5) or [HH:]MM:SS (1:30)") from None
    return seconds


def parse_duration(value: str | None) -> float | None:
    seconds = parse_time(value, "--duration")
    if seconds == 0:
        raise UsageError(f"--duration '{value}' is no time at all: give more than 0 seconds")
    return seconds


def parse_bitrate(value: str | int | None) -> int | None:
    """``--video-bitrate`` in bits per second, from ``2M``, ``800k`` or ``1500000``; ``UsageError`` otherwise."""
    if value is None:
        return None
    text = str(value).strip()
    factor = {"k": 1_000, "m": 1_000_000}.get(text[-1:].lower(), 1)
    try:
        rate = float(text[:-1] if factor > 1 else text) * factor
    except ValueError:
        rate = -1
    if not 1_000 <= rate <= 1_000_000_000:
        raise UsageError(f"--video-bitrate '{value}' is not a bit rate from 1k to 1000M (e.g. 800k, 2M, 1500000)")
    return int(rate)


def parse_video_preset(value: str | int | None) -> str | None:
    """``--video-preset``: one of x264's and x265's speed names, or SVT-AV1's number; ``UsageError`` otherwise.
    Whether the codec written takes it is checked as the video is written (the codec may be chosen per file)."""
    if value is None:
        return None
    from .video.formats import SVT_AV1_PRESETS, X26X_PRESETS, preset_family  # names only: no FFmpeg loaded

    text = str(value).strip().lower()
    family = preset_family(text)
    if family is not None:
        return str(int(text)) if family == "svt-av1" else text
    raise UsageError(f"--video-preset '{value}' is not an encoder speed: {', '.join(X26X_PRESETS)} (x264, x265), "
                     f"or {SVT_AV1_PRESETS[0]} to {SVT_AV1_PRESETS[-1]} (SVT-AV1)")


@dataclass(frozen=True)
class OptionSpec:
    """How an option is given from outside: the command line's spelling and help, the form a value arrives in."""

    help: str
    metavar: str | None = None
    given_as: type = str  # the type a command line or a form gives (str for --tile's auto|0|N, a choice's word)
    parse: Callable[[Any], Any] | None = None  # from the given value to the field's (and its check)
    choices: tuple[str, ...] | None = None
    loads_models: bool = False  # a worker loads models again when this differs between jobs
    flags: tuple[str, ...] = ()  # the command line's names, where not just --NAME-WITH-DASHES
    minimum: float | None = None
    maximum: float | None = None
    panel: str | None = None  # the group --help shows it in
    show_default: bool = True
    given_default: Any = None  # the default as it is given, where it differs from the field's (--tile auto)


def option(default: Any, help: str, **spec: Any) -> Any:
    """A ``RestoreOptions`` field with the way it is given from outside."""
    return field(default=default, metadata={"option": OptionSpec(help=help, **spec)})


_FACES = "Faces"
_COLOUR = "Colour"
_VIDEO = "Video"
MAX_OUTSCALE = 16.0  # beyond any model's own scale by far; 1e7 once drove a worker to 15 GB before it failed
# A queued job's images are bounded by default: a server's or a queue's worker is shared, and one 64000x64000
# output ties it up for an hour. A local restore is the user's own machine and time, so it has no default bound.
QUEUE_MAX_OUTPUT_PIXELS = 64_000_000


@dataclass(frozen=True)
class RestoreOptions:
    """What a restore is asked to do. Fields without an ``option`` spec belong to one command (``restore``'s
    output folder and overwrite and dry-run flags) and are given by it."""

    output_dir: str = "results"  # "-": write the single result to stdout
    model: str = option(DEFAULT_MODEL, "Registry name or checkpoint path (.pth, .safetensors, ncnn .param). Given "
                        "again (or as --chain A,B), models run one after another: a 1x restoration model, then an "
                        "upscaler.", metavar="NAME|PATH", parse=parse_model, flags=("--model", "--chain"),
                        loads_models=True)
    preset: str | None = option(None, "Named models for a common job (restorecli models --presets): e.g. "
                                "old-photo (noise and artefacts removed, 4x, faces).", choices=PRESET_NAMES,
                                show_default=False)  # its models reach ``model`` and ``face_enhance``
    outscale: float | None = option(None, "Final scale, e.g. 2 or 3.5 [default: the model's].", metavar="SCALE",
                                    given_as=float, minimum=0.01, maximum=MAX_OUTSCALE, show_default=False)
    tile: int | None = option(None, "auto (from free memory), 0 (whole image) or N (N x N tiles).",  # None: auto
                              metavar="auto|0|N", parse=parse_tile, given_default="auto", loads_models=True)
    tile_pad: int = option(24, "Context overlap around each tile, in input pixels.", metavar="PIXELS", given_as=int,
                           minimum=0, loads_models=True)
    device: str = option("auto", "auto, cpu, cuda, cuda:N, mps, vulkan[:N] (ncnn on a Vulkan GPU), or "
                         "openvino:GPU|NPU (OpenVINO on an Intel GPU or NPU).",
                         metavar="auto|cpu|cuda[:N]|mps|vulkan[:N]|openvino:DEV", loads_models=True)
    backend: Literal["auto", "torch", "ncnn", "openvino"] = option(
        "auto", "What runs the model: torch, ncnn (ncnn models, on the CPU or Vulkan), openvino (the extra "
        "restorecli[openvino]: the CPU, Intel GPUs and NPUs), or auto: the one that measures fastest here "
        "(measured once per machine).", choices=BACKENDS, loads_models=True)
    precision: Literal["auto", "fp32", "fp16", "bf16"] = option(
        "auto", "auto: fp16 on CUDA, bf16 on CPUs where it measures faster, else fp32.", choices=PRECISIONS,
        loads_models=True)
    format: Literal["same", "png", "jpg", "webp", "tiff"] = option(
        "same", "Output format; same follows the input.", choices=FORMATS)
    quality: int = option(95, "JPEG/WebP quality.", metavar="1-100", given_as=int, minimum=1, maximum=100)
    suffix: str = option("", "Appended to the output file stem.", metavar="TEXT")
    recursive: bool = option(False, "Descend into directories.", given_as=bool, flags=("--recursive", "-r"))
    overwrite: bool = False
    dry_run: bool = False
    weights_dir: str | None = option(None, "Where model weights live.", metavar="DIR", loads_models=True,
                                     show_default=False)
    alpha: Literal["model", "resize"] = option("model", "Alpha channel: run through the model, or resize.",
                                               choices=ALPHAS, loads_models=True)
    max_pixels: int = option(DEFAULT_MAX_PIXELS, "Refuse larger inputs (decompression-bomb guard).", metavar="N",
                             given_as=int, minimum=1)
    max_output_pixels: int | None = option(
        None, "Refuse an image whose output would have more pixels than this [default: no limit; for queued jobs "
        f"(submit, serve) {QUEUE_MAX_OUTPUT_PIXELS:,}].", metavar="N", given_as=int, minimum=1, show_default=False)
    face_enhance: bool = option(False, "Restore faces (detect, align, restore, paste back).", given_as=bool,
                                loads_models=True, panel=_FACES)
    face_model: str = option("gfpgan-1.4", "gfpgan-1.4, gfpgan-1.3, restoreformer, codeformer (non-commercial "
                             "licence; pip install 'restorecli[codeformer]'), or a face model path.",
                             metavar="NAME|PATH", loads_models=True, panel=_FACES)
    face_detector: str = option("retinaface-resnet50",
                                "retinaface-resnet50, retinaface-mobilenet0.25 (faster), or a path.",
                                metavar="NAME|PATH", loads_models=True, panel=_FACES)
    face_weight: float = option(1.0, "Share of the face restorer's change to apply: 0 none, 1 all.", metavar="0-1",
                                given_as=float, minimum=0.0, maximum=1.0, panel=_FACES)
    face_fidelity: float = option(0.5, "CodeFormer's fidelity weight w: 0 favours quality, 1 the input's identity "
                                  "(face models without one ignore it).", metavar="0-1", given_as=float,
                                  minimum=0.0, maximum=1.0, panel=_FACES)
    only_center_face: bool = option(False, "Restore only the face nearest the image centre.", given_as=bool,
                                    panel=_FACES)
    max_faces: int | None = option(None, "Restore at most N faces (highest scores first).", metavar="N",
                                   given_as=int, minimum=0, show_default=False, panel=_FACES)
    min_face_size: float = option(0.0, "Ignore faces smaller than this many input pixels.", metavar="PIXELS",
                                  given_as=float, minimum=0, panel=_FACES)
    face_threshold: float = option(0.9, "Detection score needed to count as a face.", metavar="0-1",
                                   given_as=float, minimum=0.0, maximum=1.0, panel=_FACES)
    save_faces: str | None = option(None, "Also write the aligned and restored face crops here.", metavar="DIR",
                                    show_default=False, panel=_FACES)
    colorize: Literal["never", "auto", "always"] = option(
        "never", "Colourise with DDColor: auto (only grayscale images: one plane, or RGB whose channels agree), "
        "always, or never. Needs pip install 'restorecli[colorize]'.", choices=COLORIZE_MODES, loads_models=True,
        panel=_COLOUR)
    colorize_model: str = option("ddcolor", "ddcolor, ddcolor-tiny (faster), or a DDColor checkpoint path.",
                                 metavar="NAME|PATH", loads_models=True, panel=_COLOUR)
    video_codec: str | None = option(None, "Codec of restored videos [default: H.264 (libx264) for MP4/MOV/MKV, "
                                     "VP9 for WebM, whichever the bundled FFmpeg has].", metavar="NAME",
                                     show_default=False, panel=_VIDEO)
    crf: int | None = option(None, "Video quality as the codec's constant rate factor (lower: better, larger) "
                             "[default: the codec's].", metavar="0-63", given_as=int, minimum=0, maximum=63,
                             show_default=False, panel=_VIDEO)
    video_bitrate: int | None = option(None, "Video bit rate, e.g. 2M or 800k: a file size known ahead, instead of "
                                       "--crf's constant quality.", metavar="RATE", parse=parse_bitrate,
                                       show_default=False, panel=_VIDEO)
    video_preset: str | None = option(None, "Encoder speed of restored videos: x264's and x265's ultrafast to "
                                      "veryslow, or SVT-AV1's -1 (slowest) to 13; faster: less CPU, a larger file at "
                                      "the same --crf [default: the codec's: medium; 10].", metavar="NAME|N",
                                      parse=parse_video_preset, show_default=False, panel=_VIDEO)
    keep_audio: bool = option(True, "Copy a video's audio and subtitle streams unchanged.", given_as=bool,
                              flags=("--keep-audio/--no-audio",), panel=_VIDEO)
    frames: str | None = option(None, "Restore only frames A to B of each video (from 0, B excluded; A: or :B), "
                                "e.g. for a preview.", metavar="A:B", parse=parse_frames, show_default=False,
                                panel=_VIDEO)
    start: float | None = option(None, "Restore each video from this time on (its frames shown from then; the "
                                 "output starts at 0).", metavar="SECONDS|[HH:]MM:SS", parse=parse_time,
                                 show_default=False, panel=_VIDEO)
    duration: float | None = option(None, "Restore this long a part of each video (from --start, or the "
                                    "beginning), e.g. for a preview.", metavar="SECONDS|[HH:]MM:SS",
                                    parse=parse_duration, show_default=False, panel=_VIDEO)
    pix_fmt: str | None = option(None, "Pixel format of restored videos, e.g. yuv420p or yuv420p10le [default: the "
                                 "codec's 4:2:0 (RGB for a lossless one), in 10 bits where the input has more than 8 "
                                 "and the codec can].", metavar="NAME", show_default=False, panel=_VIDEO)
    max_video_frames: int | None = option(
        None, "Refuse a video with more frames than this: the restore stops at the first frame over it, counted as "
        "they are decoded, and writes nothing [default: no limit; for serve's jobs --max-video-seconds at 60 fps].",
        metavar="N", given_as=int, minimum=1, show_default=False, panel=_VIDEO)
    segment_seconds: float = option(10.0, "A whole video is restored in segments of about this many seconds of "
                                    "work, each kept as it is finished: a stopped run starts again at the first "
                                    "unfinished one (0: in one go, nothing kept).", metavar="SECONDS",
                                    given_as=float, minimum=0.0, panel=_VIDEO)


def declared() -> list[tuple[str, Any, OptionSpec]]:
    """Each declared option as (name, default as given, spec), in declaration order."""
    return [(f.name, f.metadata["option"].given_default if f.metadata["option"].given_default is not None
             else f.default, f.metadata["option"]) for f in fields(RestoreOptions) if "option" in f.metadata]


def from_given(values: dict[str, Any], **extra: Any) -> RestoreOptions:
    """RestoreOptions from the values a command line or form gave for the declared options (missing ones take
    their defaults), each parsed and checked; ``extra`` holds the caller's own fields. Raises ``UsageError``."""
    parsed = {}
    for name, _default, spec in declared():
        if name not in values:
            continue
        value = values[name]
        if spec.choices is not None and value is not None:
            value = check_choice(f"--{name.replace('_', '-')}", value, spec.choices)
        if spec.parse is not None:
            value = spec.parse(value)
        parsed[name] = value
    if parsed.get("preset") is not None:
        parsed = preset_values(parsed["preset"], parsed)
    if parsed.get("crf") is not None and parsed.get("video_bitrate") is not None:
        raise UsageError("--crf and --video-bitrate both set a video's quality: give one of them")
    if parsed.get("frames") and (parsed.get("start") is not None or parsed.get("duration") is not None):
        raise UsageError("--frames and --start/--duration both choose a part of a video: give one of them")
    return RestoreOptions(**parsed, **extra)


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def value_from_text(name: str, text: str) -> Any:
    """A declared option's value as the command line would give it, from text (a form field): converted to the
    type it is given as and checked against its range, as the command line checks it. Raises ``UsageError``
    naming the option; ``from_given`` then parses and checks the rest (choices, --tile's words)."""
    spec = _specs()[name]
    text = text.strip()
    if spec.choices is not None:
        return check_choice(name, text, spec.choices)
    if spec.given_as is bool:
        if text.lower() not in _TRUE + _FALSE:
            raise UsageError(f"{name} {text!r} is not true or false")
        return text.lower() in _TRUE
    if spec.given_as in (int, float):
        try:
            value = spec.given_as(text)
        except ValueError:
            kind = "a whole number" if spec.given_as is int else "a number"
            raise UsageError(f"{name} {text!r} is not {kind}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise UsageError(f"{name} {text!r} is not a finite number")
        if spec.minimum is not None and value < spec.minimum:
            raise UsageError(f"{name} {text}: must be at least {spec.minimum:g}")
        if spec.maximum is not None and value > spec.maximum:
            raise UsageError(f"{name} {text}: must be at most {spec.maximum:g}")
        return value
    return text


def _specs() -> dict[str, OptionSpec]:
    return {name: spec for name, _default, spec in declared()}


def model_key(options: RestoreOptions) -> tuple:
    """What the loaded models depend on: jobs that agree on it share one set of loaded networks."""
    return tuple(getattr(options, name) for name, _default, spec in declared() if spec.loads_models)
