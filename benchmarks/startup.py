"""Start-up cost of the commands that run no model, beside a bare interpreter: wall time and peak resident memory.

Each command runs as its own process, the way a user, cron or a shell's TAB completion runs it; the best of
``--repeats`` runs is kept (these machines are shared, so single runs move). Writes the table into
docs/performance.md between the startup markers (``common.write_block``); ``bench.py`` runs it too.

    python benchmarks/startup.py [--repeats 7] [--no-docs]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import PERFORMANCE, machine, markers, publish  # noqa: F401  (PERFORMANCE: the page it writes)

START, END = markers("startup")
TARGET_S, TARGET_MIB = 0.3, 80  # issue 15's aim on these machines


def _run(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Seconds and peak resident MiB of one process, its own rusage (wait4), not the sum of all children."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        sys.exit(f"{' '.join(argv)} exited {process.returncode}")
    return seconds, usage.ru_maxrss / 1024  # Linux reports KiB


def measure(repeats: int) -> list[dict]:
    restorecli = [sys.executable, "-c", "from restorecli.cli.app import main; main()"]
    with tempfile.TemporaryDirectory(prefix="restorecli-startup-") as tmp:
        queue = str(Path(tmp) / "queue")
        env = {**os.environ, "RESTORECLI_QUEUE": queue}
        cases = [
            ("`python -c pass`", [sys.executable, "-c", "pass"], {}),
            ("`restorecli --help`", restorecli + ["--help"], {}),
            ("`restorecli status`", restorecli + ["status"], {}),
            ("`restorecli prune --older-than 7d`", restorecli + ["prune", "--older-than", "7d"], {}),
            ("`restorecli models`", restorecli + ["models", "--weights-dir", str(Path(tmp) / "weights")], {}),
            ("shell completion (one TAB)", restorecli,
             {"_RESTORECLI_COMPLETE": "complete_bash", "COMP_WORDS": "restorecli res", "COMP_CWORD": "1"}),
        ]
        rows = []
        for label, argv, extra in cases:
            runs = [_run(argv, {**env, **extra}) for _ in range(repeats)]
            rows.append({"command": label, "seconds": min(s for s, _ in runs), "peak_mib": min(m for _, m in runs)})
    return rows


def render(rows: list[dict], repeats: int) -> str:
    bare = rows[0]
    lines = [f"Start-up of the commands that load no model, measured by `benchmarks/startup.py` on "
             f"{time.strftime('%Y-%m-%d')} ({machine()}), each a fresh process, best "
             f"of {repeats} runs. The aim on these machines is {TARGET_S} s and {TARGET_MIB} MB: PyTorch, spandrel, "
             "OpenCV and numpy are imported only by the commands that run a model or decode pixels.",
             "", "| command | wall time | above `python -c pass` | peak resident memory |", "| --- | --- | --- | --- |"]
    for row in rows:
        lines.append(f"| {row['command']} | {row['seconds']:.3f} s | "
                     f"{row['seconds'] - bare['seconds']:+.3f} s | {row['peak_mib']:.0f} MiB |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-docs", action="store_true", help="print the figures; leave docs/performance.md as it is")
    args = parser.parse_args()
    publish(render(measure(args.repeats), args.repeats), START, END, docs=not args.no_docs)


if __name__ == "__main__":
    main()
