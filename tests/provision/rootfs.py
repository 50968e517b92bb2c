"""The cached inputs of the provisioning test: a Debian root, a local apt repo, a wheelhouse.

Building them needs the package registries; the containers that use them never
do. Each artefact lives under CACHE_DIR in a directory named after a hash of
what it is made from, so a change to the package lists (or the project's
dependencies) builds a new one and removes the stale one, while an unchanged
input reuses the copy from the last run (the root takes about 80 s to build,
the reuse nothing). A lock file serialises concurrent runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import yaml

CACHE_DIR = Path(os.environ.get("HAPROXY_PY_NSPAWN_CACHE", "/var/cache/haproxy-py/nspawn"))
SUITE = "bookworm"
# What a bare Debian host offers Ansible: systemd as init, ssh, python3 and python3-apt.
BASE_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "python3",
    "python3-apt",
    "openssh-server",
    "iproute2",
)
# Python of Debian 12, for which the wheelhouse is built.
TARGET_PYTHON = "3.11"
REPO_ROOT = Path(__file__).resolve().parents[2]
ROLES = REPO_ROOT / "ansible" / "roles"
BUILD_TIMEOUT = 900.0


class BuildError(Exception):
    """A cache artefact could not be built; the message names the step and its output."""


def run(
    argv: Sequence[str],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = BUILD_TIMEOUT,
) -> str:
    """Run a build step, returning stdout; failure raises BuildError with the step's stderr."""
    done = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd, env=env
    )
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip()[-2000:]
        raise BuildError(f"`{' '.join(argv)}` failed with exit {done.returncode}:\n{tail}")
    return str(done.stdout)


def _key(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _replace_stale(kind: str, keep: Path) -> None:
    """Remove older artefacts of the same kind (their inputs changed), keeping `keep`."""
    for old in CACHE_DIR.glob(f"{kind}-*"):
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (deb822 or one-line sources)."""
    sources = Path("/etc/apt/sources.list.d")
    for path in sorted(sources.glob("*.sources")) if sources.is_dir() else []:
        text = path.read_text()
        if re.search(rf"^Suites:.*\b{SUITE}\b", text, re.M):
            found = re.search(r"^URIs:\s*(\S+)", text, re.M)
            if found:
                return found.group(1)
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        found = re.search(rf"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+{SUITE}\s", legacy.read_text(), re.M)
        if found:
            return found.group(1)
    return "http://deb.debian.org/debian"


def base_root() -> Path:
    """A debootstrap'd minbase root of Debian 12 with systemd, sshd and python3 (cached)."""
    path = CACHE_DIR / f"base-{_key(SUITE, *BASE_PACKAGES)}"
    with _locked():
        if not (path / ".complete").exists():
            shutil.rmtree(path, ignore_errors=True)
            tmp = path.with_name(path.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={','.join(BASE_PACKAGES)}",
                    SUITE,
                    str(tmp),
                    debian_mirror(),
                ]
            )
            run(["chroot", str(tmp), "apt-get", "clean"])
            (tmp / ".complete").touch()
            tmp.rename(path)
        _replace_stale("base", path)
    return path


def role_packages() -> list[str]:
    """Every Debian package the roles install (the `*_packages` lists of their defaults)."""
    names: set[str] = set()
    for defaults in sorted(ROLES.glob("*/defaults/main.yml")):
        data = yaml.safe_load(defaults.read_text()) or {}
        for key, value in data.items():
            if key.endswith("_packages") and isinstance(value, list):
                names.update(str(v) for v in value)
    return sorted(names)


def apt_repo(base: Path) -> Path:
    """A flat apt repository with the roles' packages and their dependencies missing in `base`.

    Downloaded by apt inside an overlay of the base root, so exactly what a
    bare host would fetch, then indexed with dpkg-scanpackages.
    """
    packages = role_packages()
    path = CACHE_DIR / f"repo-{_key(base.name, *packages)}"
    with _locked():
        if not (path / "Packages").exists():
            shutil.rmtree(path, ignore_errors=True)
            work = CACHE_DIR / "repo.work"
            shutil.rmtree(work, ignore_errors=True)
            with overlay(base, work) as merged:
                shutil.copy("/etc/resolv.conf", merged / "etc" / "resolv.conf")
                run(["chroot", str(merged), "apt-get", "update", "-q"])
                run(
                    [
                        "chroot",
                        str(merged),
                        "apt-get",
                        "install",
                        "-y",
                        "-q",
                        "--no-install-recommends",
                        "--download-only",
                        *packages,
                    ],
                    env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
                )
                path.mkdir()
                for deb in (merged / "var" / "cache" / "apt" / "archives").glob("*.deb"):
                    shutil.copy(deb, path / deb.name)
            shutil.rmtree(work, ignore_errors=True)
            index = run(["dpkg-scanpackages", "-m", "."], cwd=path)
            (path / "Packages").write_text(index)
        _replace_stale("repo", path)
    return path


def _install_requires() -> list[str]:
    text = (REPO_ROOT / "setup.cfg").read_text()
    found = re.search(r"^install_requires\s*=\s*\n((?:[ \t]+\S.*\n)+)", text, re.M)
    if not found:
        raise BuildError("setup.cfg: no install_requires list found")
    return [line.strip() for line in found.group(1).splitlines() if line.strip()]


def wheelhouse() -> Path:
    """Wheels of the project's dependencies for this Python (the targets run Debian's 3.11)."""
    requires = _install_requires()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    if version != TARGET_PYTHON:
        raise BuildError(
            f"the containers run Debian 12's Python {TARGET_PYTHON} and this is {version}: "
            f"run the tests from a Python {TARGET_PYTHON} virtualenv so the wheels fit them"
        )
    return _built_once(
        "wheels",
        _key(version, *requires),
        lambda path: run([sys.executable, "-m", "pip", "wheel", "-q", "-w", str(path), *requires]),
    )


def _built_once(kind: str, key: str, build: Callable[[Path], object]) -> Path:
    """CACHE_DIR/`kind`-`key`, filled by `build` unless an earlier build completed it; older
    artefacts of `kind` are removed."""
    path = CACHE_DIR / f"{kind}-{key}"
    with _locked():
        if not (path / ".complete").exists():
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir(parents=True)
            build(path)
            (path / ".complete").touch()
        _replace_stale(kind, path)
    return path


# What a wheel of the project is built from (copied, so that the build leaves nothing in the tree).
# setup.py compiles the hot modules (mypyc, with gcc and python3-dev, both in the Makefile's
# APT_PACKAGES): the wheel is for this Python, TARGET_PYTHON, as the wheelhouse is.
PROJECT_FILES = (
    "setup.py",
    "setup.cfg",
    "pyproject.toml",
    "README.md",
    "haproxy_py",
    "agent",
    "controller",
)
# An editable install's extension modules, beside their sources: the wheel builds its own.
NOT_COPIED = shutil.ignore_patterns("__pycache__", "*.so")


def project_wheel(out: Path) -> Path:
    """A wheel of the project as it is in the work tree now: built once per content of its
    sources (the compile takes minutes), kept in the cache, copied to `out`."""
    src = out / "src"
    src.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        path = REPO_ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=NOT_COPIED)
        elif path.exists():
            shutil.copy(path, src / name)
    digest = hashlib.sha256()
    for file in sorted(p for p in src.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(src)}\n".encode() + file.read_bytes())
    cached = _built_once(
        "project",
        digest.hexdigest()[:12],
        lambda path: run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(path), str(src)]
        ),
    )
    wheels = sorted(cached.glob("haproxy_py-*.whl"))
    if len(wheels) != 1:
        raise BuildError(f"expected one project wheel in {cached}, found {wheels}")
    return Path(shutil.copy(wheels[0], out / wheels[0].name))


def mount_overlay(lower: Path, work: Path) -> Path:
    """Mount a writable view of `lower` (left as it is) at work/merged; changes go to work/upper."""
    merged = work / "merged"
    for name in ("upper", "work", "merged"):
        (work / name).mkdir(parents=True, exist_ok=True)
    options = f"lowerdir={lower},upperdir={work / 'upper'},workdir={work / 'work'}"
    run(["mount", "-t", "overlay", "overlay", "-o", options, str(merged)])
    return merged


@contextlib.contextmanager
def overlay(lower: Path, work: Path) -> Iterator[Path]:
    """`mount_overlay` for the duration of a block."""
    merged = mount_overlay(lower, work)
    try:
        yield merged
    finally:
        unmount(merged)


def unmount(path: Path) -> None:
    """Unmount `path` if mounted (lazily when busy, so teardown never stops half-way)."""
    if os.path.ismount(path):
        done = subprocess.run(["umount", str(path)], capture_output=True, check=False)
        if done.returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)
