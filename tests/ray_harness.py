"""Faults inside the Ray pool's actors, for tests/test_ray.py, steered through a folder ($RAY_HARNESS_DIR):

- ``install`` (Ray's ``worker_process_setup_hook``, run in every worker process the driver's job starts) wraps the
  pipeline's decoding so that, while an actor decodes an image, the file ``busy-NODEID-PID`` exists in the folder
  (a test knows which process to SIGKILL, and that it has an image in hand); each decode first sleeps the seconds
  the folder's ``slow`` file holds, and leaves ``decoded-NAME`` once done; an input whose name holds ``poison`` kills
  its process with SIGKILL, as an out-of-memory kill or a broken decoder would, on every try. It wraps the model's
  run too: while the folder's ``hold`` file exists, the model waits, leaving ``held-PID-THREAD`` meanwhile (each
  process's first N runs go through first, where the file holds N); each run adds a byte to ``runs-PID``.
- Run as a script, it is ``restorecli`` whose ``--ray`` connection carries that hook: it connects to Ray itself
  (``local``: a private 2-CPU instance) and the driver keeps the connection it finds.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def runtime_env(folder: Path) -> dict:
    """The runtime environment that installs the faults in every worker process of a Ray job."""
    return {"worker_process_setup_hook": "ray_harness.install",
            "env_vars": {"RAY_HARNESS_DIR": str(folder),
                         "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}}


def install() -> None:
    import ray

    import restorecli.pipeline.runner as pipeline

    folder = Path(os.environ["RAY_HARNESS_DIR"])
    decode, enhance = pipeline.decode_image, pipeline.enhance
    node = ray.get_runtime_context().get_node_id()

    def faulty_decode(data, name, max_pixels):
        if "poison" in name:
            os.kill(os.getpid(), signal.SIGKILL)
        busy = folder / f"busy-{node}-{os.getpid()}"
        busy.touch()
        try:
            slow = folder / "slow"
            if slow.is_file():
                time.sleep(float(slow.read_text() or 0))
            decoded = decode(data, name, max_pixels)
            (folder / f"decoded-{Path(name).name}").touch()
            return decoded
        finally:
            busy.unlink(missing_ok=True)

    runs = []  # the model's runs in this process

    def held_enhance(*args, **kwargs):
        runs.append(1)
        with open(folder / f"runs-{os.getpid()}", "ab") as counted:
            counted.write(b".")
        if _holding(folder / "hold", len(runs)):
            held = folder / f"held-{os.getpid()}-{threading.get_ident()}"
            held.touch()
            try:
                end = time.monotonic() + 120
                while _holding(folder / "hold", len(runs)) and time.monotonic() < end:
                    time.sleep(0.05)
            finally:
                held.unlink(missing_ok=True)
        return enhance(*args, **kwargs)

    pipeline.decode_image = faulty_decode
    pipeline.enhance = held_enhance


def _holding(hold: Path, run: int) -> bool:
    """Whether the process's ``run``-th model run waits: while ``hold`` exists, past the runs it lets through (the
    number it holds; none where it is empty)."""
    try:
        let_through = int(hold.read_text() or 0)
    except (OSError, ValueError):
        return False
    return run > let_through


def decoded(folder: Path) -> list[str]:
    """The names of the images decoded so far (since the test cleared them)."""
    return sorted(path.name.removeprefix("decoded-") for path in folder.glob("decoded-*"))


def runs(folder: Path) -> dict[int, int]:
    """The model's runs so far in each process (pid -> runs), since the test cleared them."""
    return {int(path.name.split("-")[1]): path.stat().st_size for path in folder.glob("runs-*")}


def held(folder: Path) -> list[Path]:
    """A file for each model run waiting on ``hold`` now."""
    return list(folder.glob("held-*"))


def busy(folder: Path) -> list[tuple[str, int]]:
    """(node id, pid) of each actor decoding an image now."""
    found = []
    for path in folder.glob("busy-*-*"):
        _, node, pid = path.name.split("-")
        found.append((node, int(pid)))
    return found


if __name__ == "__main__":
    import ray

    argv = sys.argv[1:]
    address = argv[argv.index("--ray") + 1]
    folder = Path(os.environ["RAY_HARNESS_DIR"])
    if address == "local":
        ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env=runtime_env(folder))
    else:
        ray.init(address=address, runtime_env=runtime_env(folder))
    from restorecli.cli.app import main

    main()
