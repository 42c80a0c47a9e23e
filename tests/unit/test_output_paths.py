"""Output paths of the CLIs checked before any work: lab_kit.output_paths.check_output_path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lab_kit.output_paths import check_output_path


def test_a_new_or_existing_file_in_a_writable_directory_passes(tmp_path):
    new = tmp_path / "report.json"
    assert check_output_path(str(new)) == new
    assert check_output_path(new, "--out") == new
    assert not new.exists()  # the check only looks
    new.write_text("{}")
    assert check_output_path(new) == new
    assert new.read_text() == "{}"


def test_no_path_given_is_fine():
    assert check_output_path(None) is None


@pytest.mark.parametrize("make, message", [
    (lambda t: t / "missing" / "x.json", "directory {t}/missing does not exist"),
    (lambda t: t, "{t} is a directory, not a file to write"),
    (lambda t: _file(t / "plain") / "x.json", "{t}/plain is not a directory"),
])
def test_bad_paths_are_refused_naming_the_option(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(ValueError) as info:
        check_output_path(str(path), "--json")
    assert str(info.value).startswith("--json: "), str(info.value)
    assert message.format(t=tmp_path) in str(info.value)
    with pytest.raises(ValueError, match=r"^--out: "):
        check_output_path(path, "--out")


def test_an_empty_path_is_refused():
    with pytest.raises(ValueError, match=r"^--json: the path is empty"):
        check_output_path("")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_directory_or_file_without_write_permission_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    existing = locked / "old.json"
    existing.write_text("{}")
    existing.chmod(0o444)
    locked.chmod(0o555)
    try:
        for path in (locked / "new.json", existing):
            with pytest.raises(ValueError, match=r"^--json: cannot write .*permission denied"):
                check_output_path(path)
    finally:
        locked.chmod(0o755)


def _file(path: Path) -> Path:
    path.write_text("")
    return path
