"""Small but wrong: each bad input is one line naming the problem, before any work.

Table: input -> expected one-line error (the key / file / path it names).
"""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pipeline.cli import main
from pipeline.config import ConfigError, load_config, validate_training
from pipeline.orchestrate.nightly import SELECTION_ARTIFACT, _stored_selection
from pipeline.stack import local as stack_local
from pipeline.stack.procs import StackError
from pipeline.tracking import TrackingError

pytestmark = [pytest.mark.unit, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "train" / "tiny.toml"


# ----------------------------------------------------------------------------- config

CONFIG_CASES = [  # (overrides, key named in the error, rule)
    (['data.train=""'], "data.train", "must name the dataset"),
    (['data.train="  "'], "data.train", "must name the dataset"),
    # tiny.toml: per_worker_batch 16 x num_workers 2 = 32 keys per step, 64 when symmetric
    (['data.train="s3://b/d"', "moco.symmetric=true", "moco.queue_size=32"],
     "moco.queue_size", "64 keys enqueued per step"),
    (['data.train="s3://b/d"', "moco.symmetric=true", "moco.queue_size=96"],
     "moco.queue_size", "64 keys enqueued per step"),
    (['data.train="s3://b/d"', "moco.symmetric=false", "moco.queue_size=48"],
     "moco.queue_size", "multiple of the global batch 32"),
]


@pytest.mark.parametrize("sets,key,rule", CONFIG_CASES)
def test_training_config_refused_naming_the_key(sets: list[str], key: str, rule: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{key}: .*{rule}") as err:
        validate_training(load_config(str(TINY), sets))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("queue", [64, 128])
def test_symmetric_queue_multiple_of_both_views_is_accepted(queue: int) -> None:
    validate_training(load_config(str(TINY), ['data.train="s3://b/d"', "moco.symmetric=true",
                                              f"moco.queue_size={queue}"]))


def test_symmetric_check_matches_what_the_queue_enqueues() -> None:
    """The rule is the model's: 2 x global batch keys per symmetric step must fit the queue."""
    import torch

    from pipeline.model.queue import KeyQueue

    queue = KeyQueue(dim=4, size=32)
    with pytest.raises(ValueError, match="do not fit"):
        queue.enqueue(torch.zeros(64, 4))  # what validation now refuses up front


# ----------------------------------------------------------------------------- stack.json

STACK_CASES = [  # (stack.json bytes, what the error says)
    (b"{not json", "JSONDecodeError"),
    (b"[1, 2]", "TypeError"),
    (b'{"state_dir": "x"}', "TypeError"),
    (b'{"state_dir": "x", "ports": {"s3": "80"}, "ray_temp_dir": "t"}', "TypeError: ports"),
    (b'{"state_dir": "x", "ports": [], "ray_temp_dir": "t"}', "AttributeError"),
    (b"\xff\xfe", "UnicodeDecodeError"),
]


@pytest.mark.parametrize("data,reason", STACK_CASES)
def test_corrupt_stack_json_is_one_line(tmp_path: Path, data: bytes, reason: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "stack.json").write_bytes(data)
    with pytest.raises(StackError, match=rf"stack.json: corrupt stack state \({reason}"):
        stack_local.load_state(tmp_path)
    assert main(["status", "--state-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mocopipe: error: ") and "\n" not in err and "stack.json" in err


# ----------------------------------------------------------------------------- shards write


def _fsize_limit() -> None:  # a full disk, as the writer sees it: EFBIG on write
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))


def test_shards_write_disk_full_is_one_line(tmp_path: Path) -> None:
    dest = tmp_path / "ds"
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "shards", "write",
                           "fashion-mnist:test", str(dest), "--max-samples", "200", "--quiet"],
                          preexec_fn=_fsize_limit, capture_output=True, text=True, cwd=REPO,
                          check=False,
                          timeout=100)
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith(f"mocopipe: error: shards write {dest}: cannot write") and \
        "File too large" in err


def test_shards_write_into_a_file_path_is_one_line(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "f").write_text("x")
    assert main(["shards", "write", "fashion-mnist:test", str(tmp_path / "f" / "ds"),
                 "--max-samples", "8", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(tmp_path / "f") in err


# ----------------------------------------------------------------------------- nightly


class _Client:
    """The two MlflowClient calls `_stored_selection` makes, with injected failures."""

    def __init__(self, listed: list[str] | Exception, content: bytes | Exception = b"") -> None:
        self.listed, self.content = listed, content

    def list_artifacts(self, run_id: str, path: str) -> list[Any]:
        if isinstance(self.listed, Exception):
            raise self.listed
        return [SimpleNamespace(path=p) for p in self.listed]

    def download_artifacts(self, run_id: str, path: str, dst: str) -> str:
        if isinstance(self.content, Exception):
            raise self.content
        out = Path(dst) / "selection.json"
        out.write_bytes(self.content)
        return str(out)


GOOD = json.dumps({"new": ["a"], "replay": [], "older": 3, "cutoff": "c",
                   "init_from": ""}).encode()
NIGHTLY_CASES = [  # (client, expected: dict / None / error text)
    (_Client([]), None),                                              # absent: plan afresh
    (_Client(["nightly/other.json"]), None),
    (_Client([SELECTION_ARTIFACT], GOOD), json.loads(GOOD)),
    (_Client(ConnectionError("MLflow down")), "cannot list"),         # used to be "absent"
    (_Client([SELECTION_ARTIFACT], OSError("S3 timeout")), "cannot be read"),
    (_Client([SELECTION_ARTIFACT], b"{trunc"), "cannot be read"),
    (_Client([SELECTION_ARTIFACT], b'{"new": []}'), "cannot be read"),
]


@pytest.mark.parametrize("client,expected", NIGHTLY_CASES)
def test_nightly_stored_selection_absent_vs_unreadable(client: _Client, expected: Any) -> None:
    run = SimpleNamespace(info=SimpleNamespace(run_id="r" * 32))
    if isinstance(expected, str):
        with pytest.raises(TrackingError, match=expected) as err:
            _stored_selection(client, run)
        assert "not re-planned" in str(err.value) and "\n" not in str(err.value).split(" (")[0]
    else:
        assert _stored_selection(client, run) == expected


def test_train_cli_with_empty_data_train_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """Through `mocopipe train`: refused before any MLflow run or Ray cluster is touched."""
    assert main(["train", str(TINY), "--set", 'data.train=""']) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mocopipe: error: data.train: ''") and "\n" not in err
