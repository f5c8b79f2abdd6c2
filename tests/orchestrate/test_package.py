"""The wheel works outside the source tree: build it, install it with --no-deps into a fresh
venv that reuses this project's installed dependencies, and from a temporary directory run
`mocopipe --version`, `mocopipe config show demo` and `mocopipe submit` of a config file
written there, against the local stack, to a finished job."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import uuid
from pathlib import Path

import pytest

from tests.orchestrate.conftest import tiny_overrides

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bin/ of a fresh venv holding only the mocopipe wheel (deps via a .pth to ours)."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("pipeline", "jobs"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    dist = base / "dist"
    # The PEP 517 hook of the project's own build backend (no network, no build isolation).
    build = subprocess.run(
        [sys.executable, "-c", "import sys; from setuptools import build_meta as b; "
         "print(b.build_wheel(sys.argv[1]))", str(dist)],
        cwd=src, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = dist / build.stdout.strip().splitlines()[-1]
    assert wheel.name.startswith("mocopipe-") and wheel.suffix == ".whl"

    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    vpy = venv / "bin" / "python"
    site = subprocess.run([str(vpy), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # A plain path line: the shared site-packages joins sys.path, its .pth files (this
    # checkout's editable install) are not processed.
    (Path(site) / "zz-mocopipe-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = subprocess.run([sys.executable, "-m", "pip", "--python", str(vpy), "install",
                          "--no-deps", "--no-index", "--disable-pip-version-check", str(wheel)],
                         capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr[-3000:]
    return venv / "bin"


def _run(bin_dir: Path, cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MOCOPIPE_GIT_SHA")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run([str(bin_dir / "mocopipe"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_installed_wheel_runs_from_anywhere(installed: Path, tmp_path: Path) -> None:
    where = _run(installed, tmp_path, "--version")
    assert where.returncode == 0, where.stderr
    assert where.stdout.strip() == "mocopipe 0.1.0"
    origin = subprocess.run([str(installed / "python"), "-c", "import pipeline; print(pipeline.__file__)"],
                            cwd=tmp_path, capture_output=True, text=True,
                            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert "site-packages" in origin.stdout and str(ROOT) not in origin.stdout, origin
    shown = _run(installed, tmp_path, "config", "show", "demo")
    assert shown.returncode == 0, shown.stderr
    assert "[train]" in shown.stdout and 'name = "demo"' in shown.stdout
    missing = _run(installed, tmp_path, "config", "show", "no-such-config")
    assert missing.returncode == 2 and "demo" in missing.stderr  # names the shipped ones


def test_installed_wheel_submits_a_config_written_anywhere(stack, jobs_data, installed: Path,
                                                           tmp_path: Path) -> None:
    name = f"wheel-{uuid.uuid4().hex[:6]}"
    config = tmp_path / "mine.toml"
    config.write_text((ROOT / "jobs" / "configs" / "demo.toml").read_text())
    argv = ["submit", "mine.toml", "--wait", "--submission-id", f"{name}-1"]
    for item in tiny_overrides(jobs_data, name):
        argv += ["--set", item]
    done = _run(installed, tmp_path, *argv, timeout=600)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    assert f"job {name}-1 SUCCEEDED" in done.stdout
    assert "the mocopipe installed on the cluster" in done.stdout  # no checkout shipped
    assert '"steps": 4' in done.stdout
