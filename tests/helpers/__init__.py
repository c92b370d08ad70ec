"""What many test files share: ``cli`` runs the command line in-process, ``wait`` waits on a condition (never on a
fixed sleep), ``processes`` reads children and liveness from /proc. Fixtures stay in tests/conftest.py; these are
plain functions, imported as ``from helpers.wait import wait_until`` (pytest puts tests/ on the path). Nothing here
imports torch, so any test file, harness or server-side test may use them."""
