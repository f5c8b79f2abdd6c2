"""CheckpointManager over a local artifact directory (`LocalArtifacts`, the same interface
as the MLflow run's artifacts): commit marker, pruning, integrity, async upload, fallback
past a corrupt checkpoint, consecutive upload failures."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.train.checkpoint import (
    MARKER,
    CheckpointError,
    CheckpointManager,
    pack,
    step_dir,
    unpack,
)
from pipeline.train.services import LocalArtifacts
from pipeline.train.state import (
    checkpoint_files,
    gather_to_all,
    rng_state,
    set_rng_state,
)

pytestmark = pytest.mark.unit


def _repo(tmp_path: Path) -> LocalArtifacts:
    return LocalArtifacts(str(tmp_path / "artifacts"))


def _files(step: int) -> dict[str, bytes]:
    return {"state.pt": pack({"step": step, "w": torch.full((3,), float(step))}),
            "ranks.pt": pack([{"rank": 0}, {"rank": 1}])}


def test_save_load_roundtrip_and_keep_last(tmp_path: Path) -> None:
    commits: list[int] = []
    mgr = CheckpointManager(_repo(tmp_path), every_steps=5, keep=2, before_commit=commits.append)
    assert mgr.latest_step() is None
    for step in (5, 10, 15):
        mgr.save(step, _files(step))
    mgr.close()
    assert commits == [5, 10, 15]
    assert mgr.steps() == [10, 15]  # step 5 pruned
    assert not (tmp_path / "artifacts" / step_dir(5)).exists()
    state = unpack(mgr.load()["state.pt"])
    assert state["step"] == 15 and torch.equal(state["w"], torch.full((3,), 15.0))
    assert unpack(mgr.load(10, names=("ranks.pt",))["ranks.pt"]) == [{"rank": 0}, {"rank": 1}]


def test_checkpoint_without_marker_is_never_loaded(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    mgr = CheckpointManager(repo, every_steps=1, keep=3)
    mgr.save(4, _files(4), last=True)
    # A crash after uploading the files of step 8 but before its marker:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "state.pt").write_bytes(_files(8)["state.pt"])
    repo.put(str(tmp_path / "x" / "state.pt"), step_dir(8))
    assert mgr.latest_step() == 4
    assert unpack(mgr.load()["state.pt"])["step"] == 4
    with pytest.raises(CheckpointError, match="step-0000008"):
        mgr.load(8)
    mgr.save(12, _files(12), last=True)  # the next commit prunes the leftover (8 < 12)
    assert mgr.steps() == [4, 12]
    assert not (tmp_path / "artifacts" / step_dir(8)).exists()


def test_corrupt_file_is_detected(tmp_path: Path) -> None:
    mgr = CheckpointManager(_repo(tmp_path), every_steps=1, keep=1)
    mgr.save(3, _files(3), last=True)
    path = tmp_path / "artifacts" / step_dir(3) / "state.pt"
    path.write_bytes(path.read_bytes()[:-1] + b"x")
    with pytest.raises(CheckpointError, match="sha256"):
        mgr.load(3)


def test_failed_upload_is_reported_and_does_not_commit(tmp_path: Path) -> None:
    class Broken(LocalArtifacts):
        def put(self, local_file: str, artifact_dir: str) -> None:
            if os.path.basename(local_file) == "ranks.pt":
                raise OSError("server unreachable")
            super().put(local_file, artifact_dir)

    mgr = CheckpointManager(Broken(str(tmp_path / "artifacts")), every_steps=1, keep=1)
    mgr.save(2, _files(2))
    with pytest.raises(CheckpointError, match="server unreachable"):
        mgr.close()
    assert mgr.latest_step() is None
    assert not (tmp_path / "artifacts" / step_dir(2) / MARKER).exists()


def test_validation() -> None:
    with pytest.raises(ValueError, match="every_steps"):
        CheckpointManager(None, every_steps=0, keep=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="keep"):
        CheckpointManager(None, every_steps=1, keep=0)  # type: ignore[arg-type]


def test_rng_state_roundtrip_through_weights_only_load() -> None:
    gen = torch.Generator().manual_seed(7)
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    saved = unpack(pack(rng_state(gen)))
    expected = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(3, generator=gen))
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    gen.manual_seed(99)
    set_rng_state(saved, gen)
    got = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(3, generator=gen))
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert got[2] == expected[2] and torch.equal(got[3], expected[3])


def test_checkpoint_files_layout_single_process() -> None:
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
    ranks = gather_to_all({"loader": {"epoch": 0, "step": 3}})
    assert ranks == [{"loader": {"epoch": 0, "step": 3}}]
    files = checkpoint_files({"model": model.state_dict(), "optimizer": opt.state_dict(),
                              "scaler": None, "schedule": {"base_lr": 0.1}, "step": 3,
                              "nonfinite": 0}, ranks, {"manifest_sha": "abc"})
    state = unpack(files["state.pt"])
    assert state["world_size"] == 1 and state["step"] == 3
    assert state["meta"] == {"manifest_sha": "abc"}
    assert state["optimizer"]["state"][0]["momentum_buffer"].shape == (2, 2)


def test_corrupt_newest_falls_back_to_the_previous_complete_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mgr = CheckpointManager(_repo(tmp_path), every_steps=1, keep=3)
    for step in (2, 4):
        mgr.save(step, _files(step), last=True, meta={"manifest_sha": f"m{step}"})
    path = tmp_path / "artifacts" / step_dir(4) / "state.pt"
    path.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="sha256"):
        mgr.load(4)
    step, files = mgr.load_newest()  # type: ignore[misc]
    assert step == 2 and unpack(files["state.pt"])["step"] == 2
    out = capsys.readouterr().out
    assert "step-0000004 is corrupt" in out and "falling back" in out
    assert mgr.meta(2) == {"manifest_sha": "m2"}


def test_consecutive_upload_failures_fail_the_run_loudly(tmp_path: Path) -> None:
    class Down(LocalArtifacts):
        def put(self, local_file: str, artifact_dir: str) -> None:
            raise OSError("artifact store down")

    mgr = CheckpointManager(Down(str(tmp_path / "a")), every_steps=1, keep=1, max_failures=3)
    mgr.save(1, _files(1))
    mgr.save(2, _files(2))  # failure 1 reported (logged), training goes on
    mgr.save(3, _files(3))  # failure 2
    with pytest.raises(CheckpointError, match="checkpoint.max_upload_failures: 3 consecutive"):
        mgr.save(4, _files(4))  # failure 3 seen here: the run stops


def test_a_success_resets_the_failure_count(tmp_path: Path) -> None:
    fail = [True]

    class Flaky(LocalArtifacts):
        def put(self, local_file: str, artifact_dir: str) -> None:
            if fail[0]:
                raise OSError("blip")
            super().put(local_file, artifact_dir)

    mgr = CheckpointManager(Flaky(str(tmp_path / "a")), every_steps=1, keep=1, max_failures=2)
    mgr.save(1, _files(1))
    fail[0] = False
    mgr.save(2, _files(2))  # failure 1 reported; this one succeeds
    mgr.wait()
    assert mgr.failures == 0 and mgr.latest_step() == 2
    fail[0] = True
    mgr.save(3, _files(3))
    mgr.save(4, _files(4))  # one failure only: no raise
    assert mgr.failures == 1
