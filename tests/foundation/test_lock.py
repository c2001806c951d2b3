"""requirements.lock and requirements-image.lock (`make lock`) pin the whole dependency tree; they
must agree with pyproject.toml, or a dependency added, removed or re-pinned there would not reach
.venv or the image. `make lock` mends every failure here."""
from __future__ import annotations

import re
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO

FIX = "run `make lock` after changing pyproject.toml's dependencies"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def pyproject_requirements(extras: tuple[str, ...]) -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project["optional-dependencies"][extra]
    return [Requirement(r) for r in reqs]


def parse_lock(name: str) -> tuple[dict[str, str], set[str], set[str]]:
    """(version of every locked package, those required by pyproject.toml itself, those without a hash)."""
    versions: dict[str, str] = {}
    direct: set[str] = set()
    hashed: set[str] = set()
    current = None
    for line in (REPO / name).read_text().splitlines():
        m = _PIN.match(line)
        if m:
            current = canonicalize_name(m.group(1))
            versions[current] = m.group(2)
        elif current and "--hash=sha256:" in line:
            hashed.add(current)
        elif current and "aether-platform (pyproject.toml)" in line:
            direct.add(current)
    return versions, direct, set(versions) - hashed


@pytest.mark.parametrize(("lock", "extras"), [("requirements.lock", ("test",)), ("requirements-image.lock", ())])
def test_lock_agrees_with_pyproject(lock, extras):
    versions, direct, unhashed = parse_lock(lock)
    reqs = pyproject_requirements(extras)
    for req in reqs:
        pins = [s.version for s in req.specifier if s.operator == "=="]
        assert pins, f"{req} in pyproject.toml is not pinned with =="
        name = canonicalize_name(req.name)
        assert versions.get(name) == pins[0], f"{lock} has {name}=={versions.get(name)}, pyproject.toml {req}: {FIX}"
    # The other way round: nothing locked as a direct dependency that pyproject.toml no longer names.
    assert direct == {canonicalize_name(r.name) for r in reqs}, FIX
    assert unhashed == set(), f"{lock}: packages without a hash: {FIX}"
    assert "make lock" in (REPO / lock).read_text().split("\n", 3)[1]


def test_image_lock_has_the_same_versions_as_the_full_lock():
    full, _, _ = parse_lock("requirements.lock")
    image, _, _ = parse_lock("requirements-image.lock")
    assert set(image) <= set(full)
    assert {n: v for n, v in image.items() if full[n] != v} == {}, FIX
