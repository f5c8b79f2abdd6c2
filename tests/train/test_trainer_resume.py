"""The training loop in ONE process, no server: in-memory tensor batches (batch 2, small_cnn),
the in-memory metric sink and a local artifact directory. Stop at step k + resume gives
bitwise the same state as an uninterrupted run; every log step is logged once; a resume
with changed config is refused unless allowed; non-finite weights are never committed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from pipeline.config import Config, load_config
from pipeline.train.checkpoint import CheckpointManager
from pipeline.train.loop import Services, TrainResult, save, train
from pipeline.train.services import LocalArtifacts, MemorySink
from pipeline.train.state import ResumeMismatchError, run_fingerprint
from pipeline.train.trainer import build_trainer

pytestmark = pytest.mark.unit

SPE, EPOCHS, LOG_EVERY = 6, 2, 2
TOTAL = SPE * EPOCHS
MANIFEST_SHA = "0" * 64


def _cfg(*extra: str) -> Config:
    return load_config(None, [
        "data.image_size=16", "data.channels=1", "augment.mean=[0.5]", "augment.std=[0.25]",
        "augment.blur_p=0.0", 'model.arch="small_cnn"', "model.small_images=true",
        "model.width=4", "moco.dim=8", "moco.queue_size=8", 'moco.bn="none"',
        "optim.lr=0.05", "optim.base_batch=2", "optim.warmup_epochs=0.5",
        f"train.epochs={EPOCHS}", "train.per_worker_batch=2", "train.seed=11",
        f"train.log_every={LOG_EVERY}", "checkpoint.every_steps=4", "checkpoint.keep=2",
        "ray.num_workers=1", *extra])


class TensorBatches:
    """An in-memory BatchSource: batch (epoch, i) is a fixed function of its seed."""

    def __init__(self, steps_per_epoch: int = SPE, batch: int = 2, side: int = 16) -> None:
        self.steps_per_epoch, self.batch, self.side = steps_per_epoch, batch, side
        self._state: dict[str, Any] = {"epoch": 0, "step": 0}
        self._resume: dict[str, Any] | None = None

    def epoch(self, epoch: int) -> Iterator[dict[str, Any]]:
        resume, self._resume = self._resume, None
        first = resume["step"] if resume is not None and resume["epoch"] == epoch else 0
        samples = resume["samples"] if first else 0  # carried across a resume, as Loader's
        for i in range(first, self.steps_per_epoch):
            g = torch.Generator().manual_seed(epoch * 1000 + i)
            views = torch.randint(0, 256, (2, self.batch, 1, self.side, self.side),
                                  generator=g, dtype=torch.uint8)
            samples += self.batch
            self._state = {"epoch": epoch, "step": i + 1, "samples": samples}
            yield {"view1": views[0], "view2": views[1]}

    def state_dict(self) -> dict[str, Any]:
        return dict(self._state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume = dict(state)
        self._state = dict(state)


def _run(cfg: Config, repo: LocalArtifacts, sink: MemorySink, *,
         stop_at: int | None = None, prefetch: bool = False) -> tuple[TrainResult, Any]:
    """One attempt of the loop; `stop_at`: the stop request is seen before step `stop_at`;
    `prefetch`: the batches come through `PrefetchingSource` (what a CUDA worker uses), here
    on the CPU, 3 batches ahead."""
    trainer = build_trainer(cfg, steps_per_epoch=SPE, device=torch.device("cpu"))
    polls: list[int] = []

    def should_stop() -> bool:  # polled before log steps, like the driver's stop flag
        polls.append(trainer.steps_done + 1)
        return stop_at is not None and trainer.steps_done + 1 >= stop_at

    services = Services(artifacts=repo, sink=sink, should_stop=should_stop,
                        fingerprint=run_fingerprint(cfg.flat(), MANIFEST_SHA))
    source: Any = TensorBatches()
    if prefetch:
        from pipeline.ingest.prefetch import PrefetchingSource

        source = PrefetchingSource(source, torch.device("cpu"), depth=3)
    result = train(trainer, source, services, train_cfg=cfg.train,
                   ckpt_cfg=cfg.checkpoint, eval_every_epochs=0, global_batch=cfg.global_batch)
    return result, trainer


def _assert_bitwise_equal(a: dict[str, Any], b: dict[str, Any], where: str = "") -> None:
    assert a.keys() == b.keys(), where
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, dict):
            _assert_bitwise_equal(x, y, f"{where}.{key}")
        elif isinstance(x, torch.Tensor):
            assert torch.equal(x, y), f"{where}.{key} differs"
        elif isinstance(x, list) and x and isinstance(x[0], dict):
            for i, (u, v) in enumerate(zip(x, y, strict=True)):
                _assert_bitwise_equal(u, v, f"{where}.{key}[{i}]")
        else:
            assert x == y, f"{where}.{key}: {x!r} != {y!r}"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainResult, Any, MemorySink]:
    sink = MemorySink()
    result, trainer = _run(_cfg(), LocalArtifacts(str(tmp_path_factory.mktemp("ref"))), sink)
    return result, trainer.state_dict(), sink


def test_uninterrupted_run_logs_each_log_step_once(uninterrupted: Any) -> None:
    result, state, sink = uninterrupted
    assert result.step == TOTAL and not result.stopped and result.loss is not None
    assert sink.steps("loss") == list(range(LOG_EVERY, TOTAL + 1, LOG_EVERY))
    assert sink.steps("startup/first_step_s") == [0]  # the startup breakdown, once
    assert result.first_step_s is not None and result.first_step_s > 0
    assert state["step"] == TOTAL and state["schedule"]["total_steps"] == TOTAL
    # each epoch's consumption, logged once at its last step (and the last one in the result)
    assert [(s, m["epoch_samples"]) for s, m in sink.records if "epoch_samples" in m] == [
        (SPE, SPE * 2), (TOTAL, SPE * 2)]
    assert result.epoch_samples == SPE * 2


@pytest.mark.parametrize(("stop_at", "prefetch"), [(4, False), (6, False), (4, True)],
                         ids=["4-plain", "6-plain", "4-device-prefetch"])  # 4: a checkpoint step
def test_stop_at_step_k_then_resume_is_bitwise_the_uninterrupted_run(
        tmp_path: Path, uninterrupted: Any, stop_at: int, prefetch: bool,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Also through `PrefetchingSource`, which pulls batches ahead of the step: the
    checkpoint still holds the data cursor of the last batch trained on."""
    _, want, ref_sink = uninterrupted
    repo, first, second = LocalArtifacts(str(tmp_path)), MemorySink(), MemorySink()
    stopped, _ = _run(_cfg(), repo, first, stop_at=stop_at, prefetch=prefetch)
    assert stopped.stopped and stopped.step == stop_at
    assert CheckpointManager(repo, every_steps=4, keep=2).latest_step() == stop_at
    resumed, trainer = _run(_cfg(), repo, second, prefetch=prefetch)
    assert f"resumed from checkpoint step {stop_at}" in capsys.readouterr().out
    assert resumed.step == TOTAL and not resumed.stopped
    _assert_bitwise_equal(trainer.state_dict(), want)
    logged = first.steps("loss") + second.steps("loss")
    assert logged == ref_sink.steps("loss")  # each log step exactly once over both attempts
    ref_loss = {s: m["loss"] for s, m in ref_sink.records if "loss" in m}
    got_loss = {s: m["loss"] for s, m in first.records + second.records if "loss" in m}
    assert got_loss == ref_loss
    # an epoch resumed midway is still counted whole, once
    assert [(s, m["epoch_samples"]) for s, m in first.records + second.records
            if "epoch_samples" in m] == [(SPE, SPE * 2), (TOTAL, SPE * 2)]


class CrashingSink(MemorySink):
    """A metric sink whose process 'dies' when step `at` is logged (a worker killed)."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def log(self, metrics: Any, step: int) -> None:
        if step == self.at:
            raise SystemExit(f"killed at step {step}")
        super().log(metrics, step)


@pytest.mark.parametrize("prefetch", [False, True], ids=["plain", "device-prefetch"])
def test_crash_after_a_checkpoint_resumes_bitwise(tmp_path: Path, uninterrupted: Any,
                                                  prefetch: bool) -> None:
    _, want, _ = uninterrupted
    repo = LocalArtifacts(str(tmp_path))
    with pytest.raises(SystemExit, match="killed at step 10"):
        _run(_cfg(), repo, CrashingSink(10), prefetch=prefetch)
    assert CheckpointManager(repo, every_steps=4, keep=2).latest_step() == 8
    resumed, trainer = _run(_cfg(), repo, MemorySink(), prefetch=prefetch)
    assert resumed.step == TOTAL
    _assert_bitwise_equal(trainer.state_dict(), want)


def test_resume_with_changed_config_is_refused_unless_allowed(tmp_path: Path) -> None:
    repo = LocalArtifacts(str(tmp_path))
    _run(_cfg(), repo, MemorySink(), stop_at=4)
    with pytest.raises(ResumeMismatchError, match=r"optim\.lr") as err:
        _run(_cfg("optim.lr=0.1"), repo, MemorySink())
    assert "\n" not in str(err.value) and "train.allow_changed_resume" in str(err.value)
    sink = MemorySink()
    result, trainer = _run(_cfg("optim.lr=0.1", "train.allow_changed_resume=true"), repo, sink)
    assert result.resume_changed == ["optim.lr"] and result.step == TOTAL
    assert sink.tags["mocopipe.resume_changed"] == "optim.lr"
    assert trainer.lr_schedule.base_lr == pytest.approx(0.1)  # the user asked for the change


def test_the_saved_lr_schedule_is_restored() -> None:
    a = build_trainer(_cfg(), steps_per_epoch=SPE, device=torch.device("cpu"))
    b = build_trainer(_cfg("train.epochs=5", "optim.schedule=\"constant\""), steps_per_epoch=SPE,
                      device=torch.device("cpu"))
    b.load_state_dict(a.state_dict())
    assert b.lr_schedule == a.lr_schedule and b.total_steps == TOTAL


def test_non_finite_weights_are_never_committed(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _cfg()
    repo, sink = LocalArtifacts(str(tmp_path)), MemorySink()
    trainer = build_trainer(cfg, steps_per_epoch=SPE, device=torch.device("cpu"))
    mgr = CheckpointManager(repo, every_steps=4, keep=2)
    services = Services(artifacts=repo, sink=sink)
    save(trainer, TensorBatches(), mgr, services, 4, last=True)
    assert mgr.latest_step() == 4
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(float("nan"))
    save(trainer, TensorBatches(), mgr, services, 8, last=True)
    mgr.close()
    assert mgr.latest_step() == 4
    assert "non-finite weights, checkpoint NOT saved" in capsys.readouterr().out
    assert "mocopipe.alert" in sink.tags


class StuckSink(MemorySink):
    """A metric sink whose server is down: flush never completes in time."""

    def flush(self, timeout: float | None = None) -> bool:
        assert timeout is not None, "the commit-time flush must be bounded"
        return False


def test_a_commit_whose_metrics_cannot_be_flushed_is_not_committed(tmp_path: Path) -> None:
    from pipeline.train.checkpoint import CheckpointError
    from pipeline.train.loop import _flush_or_veto

    repo = LocalArtifacts(str(tmp_path))
    mgr = CheckpointManager(repo, every_steps=1, keep=1,
                            before_commit=_flush_or_veto(StuckSink(), timeout=0.5))
    trainer = build_trainer(_cfg(), steps_per_epoch=SPE, device=torch.device("cpu"))
    with pytest.raises(CheckpointError, match=r"checkpoint\.flush_timeout_s: metrics up to step 4"):
        save(trainer, TensorBatches(), mgr, Services(artifacts=repo), 4, last=True)
    assert mgr.latest_step() is None


def test_ray_train_reports_are_throttled_to_train_report_every(tmp_path: Path) -> None:
    """ray.train.report is a barrier of all workers: it is called at log steps at least
    train.report_every steps apart (the same steps on every rank) and at the last step."""
    cfg = _cfg("train.report_every=5")
    trainer = build_trainer(cfg, steps_per_epoch=SPE, device=torch.device("cpu"))
    reported: list[int] = []
    services = Services(artifacts=LocalArtifacts(str(tmp_path)), sink=MemorySink(),
                        report=lambda m: reported.append(int(m["step"])),
                        fingerprint=run_fingerprint(cfg.flat(), MANIFEST_SHA))
    train(trainer, TensorBatches(), services, train_cfg=cfg.train, ckpt_cfg=cfg.checkpoint,
          eval_every_epochs=0, global_batch=cfg.global_batch)
    assert reported == [6, 12]  # log steps 2..12; 6 - 0 >= 5, 12 - 6 >= 5 (and the last)
