"""The Ray job entrypoints (`jobs/*.py`) share the CLI's `--set` and its one error handler."""

from __future__ import annotations

import pytest

from jobs import evaluate as job_evaluate
from jobs import nightly as job_nightly
from jobs import pretrain as job_pretrain
from pipeline.cli import EXIT_BAD_INPUT, EXIT_STOPPED

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("job", [job_pretrain, job_nightly, job_evaluate])
def test_a_bad_override_is_one_line_and_exit_2(job, capsys) -> None:
    rc = job.main(["--config", "demo", "--set", "train.seed=-3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == EXIT_BAD_INPUT
    assert len(err) == 1 and "train.seed" in err[0], err


@pytest.mark.parametrize("job", [job_pretrain, job_nightly, job_evaluate])
def test_an_unknown_config_is_one_line_and_exit_2(job, capsys) -> None:
    assert job.main(["--config", "no-such-config-anywhere"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no-such-config-anywhere" in err[0], err


def test_a_bad_night_date_is_one_line(capsys) -> None:
    assert job_nightly.main(["--config", "demo", "--date", "2026-13-40"]) == EXIT_BAD_INPUT
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_a_stopped_run_exits_143_from_the_job_as_from_the_cli(monkeypatch, capsys) -> None:
    import pipeline.train.ray_trainer as rt

    monkeypatch.setattr(rt, "run_training", lambda cfg, resume=None: {"stopped": True})
    assert job_pretrain.main(["--config", "demo"]) == EXIT_STOPPED == 143
    monkeypatch.setattr(rt, "run_training", lambda cfg, resume=None: {"stopped": False})
    assert job_pretrain.main(["--config", "demo"]) == 0
