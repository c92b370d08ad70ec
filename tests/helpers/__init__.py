"""What many test files share: ``cli`` runs the command line in-process, ``wait`` waits on a condition (never on a
fixed sleep). Fixtures stay in tests/conftest.py; these are plain functions, imported as ``from helpers.wait import
wait_until``. Nothing here imports torch, so any test file may use them."""
