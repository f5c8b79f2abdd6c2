"""Unit tests of `mocopipe evaluate`'s pure parts: config rebuild, source resolution, tables."""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

import pytest

from pipeline.config import ConfigError, load_config
from pipeline.eval.evaluate import (EvalReport, config_from_params, format_table, resolve_source,
                                     split_data, version_tags)
from pipeline.tracking import TrackingError, redact_map

pytestmark = pytest.mark.unit

DEMO = os.path.join(os.path.dirname(__file__), "..", "..", "jobs", "configs", "demo.toml")
RUN = "0123456789abcdef0123456789abcdef"


def test_config_from_params_round_trips_the_logged_config() -> None:
    cfg = load_config(DEMO, ["ray.run_name=\"2024\"", "moco.bn=split"])
    params = redact_map(cfg.flat())  # exactly what tracking.log_params sends
    assert config_from_params(params).to_dict() == cfg.to_dict()
    again = config_from_params(params, ["eval.max_bank=100", "eval.knn_k=5"])
    assert (again.eval.max_bank, again.eval.knn_k) == (100, 5)
    with pytest.raises(ConfigError, match="eval.knn_k"):
        config_from_params(params, ["eval.knn_k=0"])


def test_config_from_params_ignores_foreign_params() -> None:
    cfg = load_config(DEMO)
    params = redact_map(cfg.flat()) | {"n_train": "5", "model.removed_key": "1"}
    assert config_from_params(params).to_dict() == cfg.to_dict()


class _FakeRegistry:
    """The few MlflowClient registry calls resolve_source makes."""

    def __init__(self) -> None:
        self.versions = [SimpleNamespace(name="enc", version=v, run_id=f"{v:032x}")
                         for v in (1, 2, 3)]

    def get_model_version(self, name: str, version: str) -> Any:
        return next(v for v in self.versions if v.name == name and str(v.version) == version)

    def get_model_version_by_alias(self, name: str, alias: str) -> Any:
        assert alias == "champion"
        return self.versions[1]

    def search_model_versions(self, filter_string: str, order_by: Any = None) -> list[Any]:
        if filter_string.startswith("name"):
            return sorted(self.versions, key=lambda v: -v.version)
        return [v for v in self.versions if v.run_id in filter_string]

    def get_logged_model(self, model_id: str) -> Any:
        return SimpleNamespace(source_run_id=RUN)


@pytest.mark.parametrize("ref,expected", [
    ("models:/enc/1", (f"{1:032x}", "enc", "1")),
    ("models:/enc@champion", (f"{2:032x}", "enc", "2")),
    ("models:/enc/latest", (f"{3:032x}", "enc", "3")),
    ("models:/m-abc", (RUN, None, None)),
    (f"runs:/{3:032x}/encoder", (f"{3:032x}", "enc", "3")),
    (RUN, (RUN, None, None)),
])
def test_resolve_source(ref: str, expected: tuple) -> None:
    assert resolve_source(_FakeRegistry(), ref) == expected


@pytest.mark.parametrize("ref", ["models:/enc", "not-a-run", "runs:/xyz"])
def test_resolve_source_rejects_bad_references(ref: str) -> None:
    with pytest.raises(TrackingError, match="models:/NAME/VERSION"):
        resolve_source(_FakeRegistry(), ref)


def test_split_data_conventions() -> None:
    cfg = load_config(DEMO)
    assert split_data("s3://corpus/x", None, None, cfg) == ("s3://corpus/x/train",
                                                            "s3://corpus/x/test")
    assert split_data("s3://corpus/x", None, "s3://b/t", cfg) == ("s3://corpus/x/train",
                                                                   "s3://b/t")
    assert split_data(None, None, None, cfg) == (cfg.data.eval_train, cfg.data.eval_test)
    empty = load_config(None, ["data.channels=1", "augment.mean=[0.5]", "augment.std=[0.5]"])
    with pytest.raises(ConfigError, match="--data"):
        split_data(None, None, None, empty)


def test_table_metrics_and_version_tags() -> None:
    report = EvalReport(knn={"model": 0.8, "random_init": 0.5, "raw_pixels": 0.75},
                        probe={"model": 0.85, "random_init": 0.6, "raw_pixels": 0.8},
                        train_uri="s3://c/train", test_uri="s3://c/test", n_train=10, n_test=5)
    table = format_table(report, "enc v2")
    lines = table.splitlines()
    assert lines[1].split()[-2:] == ["80.00%", "85.00%"] and lines[1].startswith("enc v2")
    assert lines[3].startswith("raw pixels") and lines[3].split()[-2:] == ["75.00%", "80.00%"]
    assert report.metrics() == {"knn_top1": 0.8, "probe_top1": 0.85,
                                "random_init_knn_top1": 0.5, "random_init_probe_top1": 0.6,
                                "raw_pixels_knn_top1": 0.75, "raw_pixels_probe_top1": 0.8}
    tags = version_tags(report, "r1")
    assert tags["eval.knn_top1"] == "0.8000" and tags["eval.raw_pixels.probe_top1"] == "0.8000"
    assert tags["eval.run_id"] == "r1"
