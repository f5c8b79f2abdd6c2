"""`pipeline.tracking.git_sha`: the one project-revision function (run tags, job submission)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pipeline.orchestrate import submit
from pipeline.tracking import git_sha

pytestmark = pytest.mark.unit


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def test_git_sha_marks_dirty_tracked_changes_only(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOCOPIPE_GIT_SHA", raising=False)
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.txt").write_text("one")
    _git(tmp_path, "add", "a.txt")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    head = _git(tmp_path, "rev-parse", "HEAD")
    assert git_sha(tmp_path) == head
    (tmp_path / "untracked.txt").write_text("x")  # untracked files do not make it dirty
    assert git_sha(tmp_path) == head
    (tmp_path / "a.txt").write_text("two")
    assert git_sha(tmp_path) == f"{head}-dirty"
    monkeypatch.setenv("MOCOPIPE_GIT_SHA", "abc123")  # what a Ray job is given
    assert git_sha(tmp_path) == "abc123"


def test_git_sha_outside_a_checkout_is_the_installed_version(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib.metadata import PackageNotFoundError, version

    monkeypatch.delenv("MOCOPIPE_GIT_SHA", raising=False)
    try:
        expected = f"mocopipe-{version('mocopipe')}"
    except PackageNotFoundError:
        expected = "unknown"
    assert git_sha(tmp_path) == expected


def test_submit_uses_the_same_function() -> None:
    assert submit.git_sha is git_sha
