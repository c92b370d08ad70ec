"""Building and running the project's image with podman on a machine that reaches no container registry.

The base image is made here: debootstrap of Debian bookworm (python3, its venv module, CA certificates) from the
mirror this machine's apt uses, imported into podman. The project's own Dockerfile is then built on it, with the
host's pip settings (its configuration, the files it names, the on-disk index folders it points at) given to the
build, so the build installs from the same indexes as the host's pip. Stdlib only: the container session's
environment holds no torch.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGE = "localhost/restorecli-test-base:bookworm"
IMAGE = "localhost/restorecli-test:latest"
PIP_MOUNT = "/run/restorecli-pip"  # where the Dockerfile mounts deploy/pip/
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# crun fails on these machines (setrlimit, hybrid cgroups); runc works with limits it can set
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]

[engine]
runtime = "runc"
"""
_FILE_KEYS = ("cert", "client-cert", "constraint", "build-constraint", "requirement")
_LOCATION_KEYS = ("find-links", "index-url", "extra-index-url")


def podman_env(conf: Path) -> dict[str, str]:
    """The environment for podman calls: this module's containers.conf instead of the system's."""
    if not conf.is_file():
        conf.write_text(CONTAINERS_CONF)
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


class Podman:
    """Runs podman with the test's containers.conf."""

    def __init__(self, conf: Path):
        self.env = podman_env(conf)

    def run(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"podman {' '.join(args[:3])} ... exited {done.returncode}:\n{done.stderr[-4000:]}")
        return done


def podman_problem(conf: Path) -> str | None:
    """Why podman cannot run containers here, or None when it can."""
    if shutil.which("podman") is None:
        return "podman is not installed (apt-get install podman buildah debootstrap runc)"
    try:
        info = subprocess.run(["podman", "info"], env=podman_env(conf), capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return "podman info did not answer within 120 s"
    if info.returncode != 0:
        return f"podman info failed: {info.stderr.strip()[-500:]}"
    return None


def apt_mirror(sources: Path = Path("/etc/apt")) -> str:
    """The Debian archive this machine's apt reads (deb822 .sources files, then sources.list lines)."""
    candidates: list[str] = []
    for path in sorted((sources / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text(errors="replace")):
            fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.M))
            if "bookworm" in fields.get("Suites", "").split() and fields.get("Enabled", "yes") != "no":
                candidates += fields.get("URIs", "").split()
    listing = sources / "sources.list"
    if listing.is_file():
        for line in listing.read_text(errors="replace").splitlines():
            parts = line.split("#", 1)[0].split()
            if len(parts) >= 3 and parts[0] == "deb":
                uri_at = 2 if parts[1].startswith("[") else 1
                if parts[uri_at + 1:uri_at + 2] == ["bookworm"]:
                    candidates.append(parts[uri_at])
    main = [uri for uri in candidates if not uri.rstrip("/").endswith("-security")]
    return (main or [DEFAULT_MIRROR])[0]


def ensure_base_image(podman: Podman, work: Path) -> str:
    """The local base image, made once (debootstrap, about a minute) and reused while podman has it."""
    if podman.run("image", "exists", BASE_IMAGE, check=False).returncode == 0:
        return BASE_IMAGE
    if shutil.which("debootstrap") is None:
        raise FileNotFoundError("debootstrap is not installed (apt-get install debootstrap)")
    rootfs = work / "rootfs"
    done = subprocess.run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
                           "bookworm", str(rootfs), apt_mirror()], capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise AssertionError(f"debootstrap failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    archive = work / "rootfs.tar"
    subprocess.run(["tar", "-C", str(rootfs), "-cf", str(archive), "."], check=True, timeout=300)
    # an imported root file system has no environment: give it the PATH python:3.11-slim has
    podman.run("import", "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "--change", 'CMD ["/bin/bash"]', str(archive), BASE_IMAGE, timeout=300)
    shutil.rmtree(rootfs, ignore_errors=True)
    archive.unlink()
    return BASE_IMAGE


def host_pip_settings(python: str = "python3") -> dict[str, dict[str, str]]:
    """The host pip's effective settings by section (``pip config list``: its files and PIP_* variables, the
    variables winning, as pip applies them)."""
    listed = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60,
                            check=True).stdout
    settings: dict[str, dict[str, str]] = {}
    from_env: dict[str, str] = {}
    for line in listed.splitlines():
        match = re.fullmatch(r"(:env:|[\w-]+)\.([\w-]+)='(.*)'", line.strip())
        if not match:
            continue
        section, key, value = match.groups()
        if section == ":env:":
            from_env[key] = value
        else:
            settings.setdefault(section, {})[key] = value
    settings.setdefault("global", {}).update(from_env)
    return settings


def _local_folder(location: str) -> Path | None:
    """The folder to mount for a local find-links or index location: a ``simple`` index's root (its pages link
    to ``../../files``), else the folder itself. None for a remote location."""
    path = Path(location[len("file://"):]) if location.startswith("file://") else Path(location)
    if not path.is_absolute():
        return None
    return path.parent if path.name == "simple" else path


def write_pip_setup(folder: Path, settings: dict[str, dict[str, str]]) -> list[str]:
    """Write ``settings`` as ``folder/pip.conf`` for the build, with copies of the files it names; returns the
    ``podman build -v`` arguments that mount the local folders it points at, read-only, at their own paths."""
    folder.mkdir(parents=True, exist_ok=True)
    mounts: dict[Path, None] = {}
    lines: list[str] = []
    for section, values in settings.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if key in _FILE_KEYS:
                copied = []
                for index, name in enumerate(value.split()):
                    source = Path(name)
                    if source.is_file():
                        copy = folder / f"{key}-{index}-{source.name}"
                        shutil.copyfile(source, copy)
                        name = f"{PIP_MOUNT}/{copy.name}"
                    copied.append(name)
                value = " ".join(copied)
            elif key in _LOCATION_KEYS:
                for location in value.split():
                    local = _local_folder(location)
                    if local is not None and local.is_dir():
                        mounts[local] = None
            lines.append(f"{key} = {value}")
    (folder / "pip.conf").write_text("\n".join(lines) + "\n")
    return [arg for path in mounts for arg in ("-v", f"{path}:{path}:ro")]


def dockerignore_patterns(root: Path = ROOT) -> list[str]:
    lines = (root / ".dockerignore").read_text().splitlines()
    patterns = [line.strip().strip("/") for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if any(p.startswith("!") for p in patterns):
        raise ValueError(".dockerignore uses '!' exceptions, which build_context does not apply")
    return patterns


def ignored(relative: str, patterns: list[str]) -> bool:
    """Whether .dockerignore's ``patterns`` leave ``relative`` (a POSIX path in the context) out, itself or
    through a folder above it."""
    parts = relative.split("/")
    for depth in range(1, len(parts) + 1):
        prefix = "/".join(parts[:depth])
        for pattern in patterns:
            if pattern.startswith("**/"):
                if fnmatch.fnmatchcase(parts[depth - 1], pattern[3:]):
                    return True
            elif fnmatch.fnmatchcase(prefix, pattern):
                return True
    return False


def build_context(target: Path, root: Path = ROOT) -> Path:
    """A copy of the build context ``root``, less what .dockerignore leaves out, with deploy/pip/ emptied
    (the test writes its own pip settings there)."""
    patterns = dockerignore_patterns(root)

    def skip(folder: str, names: list[str]) -> list[str]:
        base = Path(folder).relative_to(root).as_posix()
        return [n for n in names if ignored(n if base == "." else f"{base}/{n}", patterns)]

    shutil.copytree(root, target, ignore=skip, symlinks=True)
    pip = target / "deploy" / "pip"
    for leftover in pip.iterdir() if pip.is_dir() else []:
        if leftover.name != "README.md":
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    return target


def build_image(podman: Podman, base: str, work: Path, log: Path) -> str:
    """Build the project's Dockerfile on ``base`` into ``IMAGE``, reaching the host's package indexes. Layers
    are cached by podman, so a rebuild after a change to src/ only reinstalls restorecli."""
    context = build_context(work / "context")
    mounts = write_pip_setup(context / "deploy" / "pip", host_pip_settings())
    # docker format: the OCI format has no HEALTHCHECK
    done = podman.run("build", "--format", "docker", "--network=host", *mounts, "--build-arg",
                      f"BASE_IMAGE={base}", "-t", IMAGE, str(context), timeout=1800, check=False)
    log.write_text(done.stdout + "\n" + done.stderr)
    if done.returncode != 0:
        raise AssertionError(f"podman build failed ({log}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return IMAGE
