"""Runs the restorecli CLI with faults injected through environment variables, for the queue tests.

HARNESS_SLOW=S       sleep S seconds before decoding each image (keeps a worker mid-job long enough to act)
HARNESS_HOLD=PATH    before decoding each image, wait while the file PATH exists (holds a worker mid-job until
                     the test has done what it must meanwhile, however slow the machine)
HARNESS_HOLD_ON=X    hold only the images whose file name contains X
HARNESS_CRASH_ON=X   kill the process with SIGSEGV when decoding a file whose name contains X: a crash
                     no Python code can catch, as a broken decoder would cause
"""

import os
import signal
import time

import restorecli.pipeline.runner as pipeline

_decode = pipeline.decode_image
_slow = float(os.environ.get("HARNESS_SLOW", "0") or 0)
_crash_on = os.environ.get("HARNESS_CRASH_ON")
_hold = os.environ.get("HARNESS_HOLD")
_hold_on = os.environ.get("HARNESS_HOLD_ON") or ""


def _faulty_decode(data, name, max_pixels):
    if _crash_on and _crash_on in name:
        os.kill(os.getpid(), signal.SIGSEGV)
    if _slow:
        time.sleep(_slow)  # the slow decoder is the fault injected, not a wait for anything
    end = time.monotonic() + 300  # the test removes the file once it is done; a test that failed first, at most this
    while _hold and _hold_on in name and os.path.exists(_hold) and time.monotonic() < end:
        time.sleep(0.05)
    return _decode(data, name, max_pixels)


pipeline.decode_image = _faulty_decode

if __name__ == "__main__":
    from restorecli.cli.app import main

    main()
