"""Unit tests of the typed config tree: loading, overrides, every kind of validation error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import main as cli_main
from pipeline.config import Config, ConfigError, from_dict, load_config

pytestmark = pytest.mark.unit

CONFIGS = Path(__file__).resolve().parents[1] / "jobs" / "configs"
DEMO = CONFIGS / "demo.toml"
R50 = CONFIGS / "imagenet_r50.toml"


def test_demo_config_loads_fashion_mnist_small_cnn_on_two_cpu_workers() -> None:
    cfg = load_config(DEMO)
    assert cfg.data.channels == 1 and cfg.data.image_size == 28
    assert cfg.data.train.startswith("s3://corpus/")
    assert cfg.model.arch == "small_cnn" and cfg.model.small_images
    assert cfg.ray.num_workers == 2 and not cfg.ray.use_gpu
    assert cfg.augment.mean == [0.286] and len(cfg.augment.std) == 1
    assert cfg.moco.queue_size % cfg.global_batch == 0
    assert cfg.train.name == "demo"


def test_imagenet_r50_config_has_moco_v2_reference_hyper_parameters() -> None:
    cfg = load_config(R50)
    assert cfg.model.arch == "resnet50"
    assert cfg.global_batch == 256
    assert cfg.scaled_lr == pytest.approx(0.03)
    assert (cfg.moco.queue_size, cfg.moco.momentum, cfg.moco.temperature) == (65536, 0.999, 0.2)
    assert cfg.moco.mlp and cfg.optim.schedule == "cosine" and cfg.train.epochs == 200
    assert cfg.augment.blur_p == 0.5 and cfg.augment.gray_p == 0.2  # aug+


def test_defaults_are_valid_and_flat_names_every_key() -> None:
    cfg = load_config(None)
    assert isinstance(cfg, Config)
    flat = cfg.flat()
    assert flat["moco.queue_size"] == 65536 and flat["train.per_worker_batch"] == 32
    assert len(flat) == sum(len(v) for v in cfg.to_dict().values())


def test_overrides_are_parsed_as_toml_values_and_applied() -> None:
    cfg = load_config(DEMO, ["train.max_steps=20", "optim.lr=0.12", "train.name=demo-fast",
                             "augment.mean=[0.5]", "moco.symmetric=true",
                             "ingest.reader_resources={cpu_node = 0.5}"])
    assert cfg.train.max_steps == 20 and isinstance(cfg.train.max_steps, int)
    assert cfg.optim.lr == 0.12
    assert cfg.train.name == "demo-fast"  # a bare word falls back to a string
    assert cfg.augment.mean == [0.5]
    assert cfg.moco.symmetric is True
    assert cfg.ingest.reader_resources == {"cpu_node": 0.5}
    assert cfg.model.arch == "small_cnn"  # untouched keys keep the file's values


def test_scaled_lr_follows_the_global_batch() -> None:
    cfg = load_config(DEMO, ["train.per_worker_batch=64", "ray.num_workers=4"])
    assert cfg.global_batch == 256
    assert cfg.scaled_lr == pytest.approx(0.06 * 256 / 256)
    half = load_config(DEMO, ["train.per_worker_batch=64"])
    assert half.scaled_lr == pytest.approx(0.06 * 128 / 256)


def test_int_widens_to_float() -> None:
    cfg = load_config(DEMO, ["optim.lr=1"])
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)


# (overrides on top of demo.toml, the dotted key the message must start with, a fragment)
BAD = [
    (["bogus.x=1"], "bogus", "unknown section"),
    (["train.epoch=3"], "train.epoch", "valid keys of [train]: name, epochs"),
    (["train.epochs='ten'"], "train.epochs", "expected an integer"),
    (["train.per_worker_batch=12.5"], "train.per_worker_batch", "expected an integer"),
    (["model.small_images=1"], "model.small_images", "expected true or false"),
    (["optim.lr='fast'"], "optim.lr", "expected a number"),
    (["model.arch='vgg16'"], "model.arch", "is not one of"),
    (["optim.schedule='step'"], "optim.schedule", "is not one of"),
    (["augment.mean=0.5"], "augment.mean", "expected a list"),
    (["moco.momentum=1.0"], "moco.momentum", "[0, 1)"),
    (["moco.temperature=0"], "moco.temperature", "> 0"),
    (["data.channels=2"], "data.channels", "1 or 3"),
    (["augment.flip_p=1.5"], "augment.flip_p", "probability"),
    (["optim.lr=-0.1"], "optim.lr", "> 0"),
    (["ray.num_workers=0"], "ray.num_workers", ">= 1"),
    (["storage.multipart_chunk_mb=4"], "storage.multipart_chunk_mb", ">= 5"),
    (["data.image_size=4"], "data.image_size", "[8, 1024]"),
    (["data.image_size=128"], "data.image_size", "small_cnn"),
    (["model.pool_grid=0"], "model.pool_grid", ">= 1"),
    (["model.pool_grid=5"], "model.pool_grid", "<= 4, the side of the last feature map"),
    (["model.arch='resnet18'", "model.pool_grid=2"], "model.pool_grid", "must be 1"),
    (["data.train='http://bucket/x'"], "data.train", "s3://bucket/prefix"),
    (["data.eval_test=''"], "data.eval_test", "together with data.eval_train"),
    (["augment.mean=[0.5, 0.5, 0.5]"], "augment.mean", "data.channels=1"),
    (["augment.crop_scale_min=0.9", "augment.crop_scale_max=0.5"], "augment.crop_scale_min",
     "crop_scale_max"),
    (["moco.queue_size=1000"], "moco.queue_size", "global batch 256"),
    (["moco.queue_size=128"], "moco.queue_size", "multiple of the global batch"),
    (["moco.bn='split'", "moco.bn_splits=3"], "moco.bn_splits", "per_worker_batch=128"),
    (["train.name='two words'"], "train.name", "letters, digits"),
    (["ingest.max_corrupt_fraction=1.0"], "ingest.max_corrupt_fraction", "[0, 1)"),
    (["ingest.reader_resources={gpu_node = -1}"], "ingest.reader_resources.gpu_node", ">= 0"),
    (["train.epochs"], "--set 'train.epochs'", "section.key=value"),
    (["epochs=3"], "--set 'epochs'", "section.key"),
]


@pytest.mark.parametrize(("overrides", "key", "fragment"), BAD,
                         ids=[" ".join(b[0]) for b in BAD])
def test_bad_config_names_the_key(overrides: list[str], key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(DEMO, overrides)
    msg = str(err.value)
    assert msg.startswith(f"{key}:"), msg
    assert fragment in msg, msg
    assert "\n" not in msg


def test_unknown_section_lists_the_valid_sections() -> None:
    with pytest.raises(ConfigError, match=r"^trainer: unknown section; valid sections: .*train"):
        from_dict({"trainer": {"epochs": 1}})


def test_section_that_is_not_a_table_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"^train: expected a table"):
        from_dict({"train": 5})


def test_missing_and_malformed_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.toml.*does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nepochs = 1\n")
    with pytest.raises(ConfigError, match="bad.toml.*not valid TOML"):
        load_config(bad)


def test_cli_config_show_prints_the_resolved_tree(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["config", "show", str(DEMO), "--set", "train.max_steps=7"]) == 0
    out = capsys.readouterr().out
    assert "[moco]" in out and "queue_size = 4096" in out and "max_steps = 7" in out


def test_cli_bad_set_prints_one_line_naming_the_key(capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli_main(["config", "show", str(DEMO), "--set", "moco.queue_size=1000"])
    captured = capsys.readouterr()
    assert rc != 0 and captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "moco.queue_size" in lines[0] and "1000" in lines[0]


def test_console_script_exits_non_zero_with_one_line_on_a_bad_key() -> None:
    res = subprocess.run([sys.executable, "-m", "pipeline.cli", "config", "show", str(DEMO),
                          "--set", "optim.lrr=0.1"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.strip().splitlines() == [
        res.stderr.strip()] and "optim.lrr: unknown key" in res.stderr


def test_shipped_configs_load_by_name_and_a_file_wins(tmp_path: Path, monkeypatch) -> None:
    root = Path(__file__).resolve().parents[1]
    assert load_config("demo") == load_config(root / "jobs" / "configs" / "demo.toml")
    assert load_config("imagenet_r50").ray.resources_per_worker == {"trainer": 1.0}
    with pytest.raises(ConfigError, match=r"'demo2' does not exist .*demo, imagenet_r50"):
        load_config("demo2")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").write_text('[train]\nname = "local-file"\n')
    assert load_config("demo").train.name == "local-file"  # an existing path is a path


def test_negative_seed_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"^train.seed: -1 must be >= 0"):
        load_config(None, ["train.seed=-1"])
