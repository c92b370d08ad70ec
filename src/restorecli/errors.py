"""Typed errors. Each carries the exit code the CLI maps it to; the library raises, only the CLI exits."""

from __future__ import annotations

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
EXIT_SETUP = 3


class RestoreCliError(Exception):
    """Base of every error restorecli raises on purpose."""

    exit_code: int = EXIT_SOME_FAILED


class UsageError(RestoreCliError):
    """The command line asks for something impossible (bad value, no input matched)."""

    exit_code = EXIT_USAGE


class SetupError(RestoreCliError):
    """The environment cannot run the job: weights, device or precision unavailable."""

    exit_code = EXIT_SETUP
    # What is missing can be provided on this machine (weights installed, a device attached): a queue worker
    # queues the job again for a worker that has it (failing it after its attempts) and goes on with the next
    of_this_machine = False


class WeightsNotFound(SetupError):
    """A model name or path could not be resolved to a weights file."""


class WeightsNotInstalled(WeightsNotFound):
    """A known model's weights are not in the weights directory, and cannot be installed there without help."""

    of_this_machine = True


class UnsupportedModel(SetupError):
    """A file exists but is not a model restorecli can run (unknown architecture, refused pickle, ...)."""


class ArchitectureMissing(SetupError):
    """A model's architecture comes from an optional package that is not installed (``restorecli[codeformer]``);
    another machine's worker may have it."""

    of_this_machine = True


class DeviceUnavailable(SetupError):
    """The requested device or precision is not available on this machine."""


class DeviceMissing(DeviceUnavailable):
    """This machine lacks the requested device (CUDA, a CUDA index, MPS) or what the job asks of it (bf16 on an
    older GPU); another machine's worker may have it."""

    of_this_machine = True


class QueueUnavailable(SetupError):
    """The job folder's database cannot be read or written (damaged, locked too long, disk full)."""


class ImageError(RestoreCliError):
    """One input image cannot be processed; in a batch this is an item's error, not a stop."""


class ImageDecodeError(ImageError):
    """The file is missing, empty, truncated or not an image."""


class ImageTooLarge(ImageError):
    """The image has more pixels than the configured limit (decompression-bomb guard)."""


class OutputTooLarge(ImageError):
    """The image's output would have more pixels than ``--max-output-pixels`` allows."""


class TileOutOfMemory(ImageError):
    """A fixed tile size does not fit in device memory."""


class ImageWarning(UserWarning):
    """An input file's reader skipped or mended something in it (a tag pointing past the file's end, damaged
    EXIF) and read the image anyway; the message names the file. A warning, not an error: the image is restored."""


class SlowPrecision(UserWarning):
    """The precision asked for runs far slower than fp32 on the device: fp16 on a CPU, which has no fp16
    arithmetic of its own and converts every value. The message says what to ask for instead."""


class PrecisionFallback(UserWarning):
    """``--precision auto`` picked a reduced precision (bf16, fp16) that the model cannot run, or runs into wrong
    pixels, so it runs in fp32 instead; the message says which model and why."""
