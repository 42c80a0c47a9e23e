"""Reproducible installs (issue 22, item 8): requirements.lock pins every package
pyproject.toml asks for (extras test, notebooks, confluent) with hashes, inside pyproject's
ranges; `make setup` installs that lock with --require-hashes; environment.yml pins its
versions and takes its pip packages from the same lock."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
EXTRAS = ("test", "notebooks", "confluent")


def _locked() -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) of every pin in the lock."""
    out: dict[str, tuple[str, int]] = {}
    name = None
    for line in LOCK.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9._-]+)==([^ ;\\]+)", line)
        if m:
            name = canonicalize_name(m.group(1))
            out[name] = (m.group(2), 0)
        elif name and line.strip().startswith("--hash=sha256:"):
            out[name] = (out[name][0], out[name][1] + 1)
    return out


def _wanted() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in EXTRAS:
        reqs += project["optional-dependencies"][extra]
    return [Requirement(r) for r in reqs]


def test_every_pin_has_hashes():
    locked = _locked()
    assert len(locked) > 50
    assert [n for n, (_v, hashes) in locked.items() if hashes == 0] == []


@pytest.mark.parametrize("req", _wanted(), ids=str)
def test_every_dependency_is_locked_inside_its_range(req):
    locked = _locked()
    name = canonicalize_name(req.name)
    assert name in locked, f"{req} is not in requirements.lock: run `make lock`"
    version = locked[name][0]
    assert req.specifier.contains(version, prereleases=True), (
        f"requirements.lock pins {name}=={version}, outside pyproject's {req}: run `make lock`")


def test_the_build_backend_is_locked_too():
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    locked = _locked()
    for r in map(Requirement, build):
        assert r.specifier.contains(locked[canonicalize_name(r.name)][0])


def test_pyproject_keeps_ranges_for_library_users():
    loose = [r for r in _wanted() if not any(s.operator == "==" for s in r.specifier)]
    assert len(loose) >= len(_wanted()) - 1  # only kafka-python is pinned exactly


def test_make_setup_installs_the_lock_with_hashes():
    make = (ROOT / "Makefile").read_text()
    recipe = make.split("$(VENV)/.installed:", 1)[1].split("\n\n", 1)[0]
    assert "LOCK   := requirements.lock" in make and "$(LOCK)" in recipe.splitlines()[0]
    assert "pip install --quiet --require-hashes -r $(LOCK)" in recipe
    assert "--no-deps" in recipe and "-e ." in recipe
    assert '-e ".[' not in recipe  # no resolving at install time


def test_environment_yml_pins_its_versions():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    conda = {d.split("=")[0]: d for d in deps if isinstance(d, str)}
    for name in ("python", "openjdk", "maven", "pip"):
        assert re.fullmatch(rf"{name}=\d+(\.\d+)+", conda[name]), conda[name]
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    assert pip == ["--require-hashes", "-r requirements.lock"]
