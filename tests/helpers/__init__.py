"""What many test files share: ``cli`` runs the command line in-process, ``wait`` waits on a condition (never on a
fixed sleep), ``processes`` reads children and liveness from /proc, ``probes`` stands for the back-end speed probe
with a test's own times. Fixtures stay in tests/conftest.py; these are plain functions and classes, imported as
``from helpers.wait import wait_until`` (pytest puts tests/ on the path). Nothing here imports torch, so any test
file, harness or server-side test may use them."""
