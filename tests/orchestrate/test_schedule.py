"""`mocopipe schedule`: crontab entries and systemd user timers, in a temporary HOME."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.orchestrate import cron as schedule
from pipeline.cli import main
from pipeline.orchestrate.cron import Crontab, ScheduleError, cron_to_oncalendar, validate_cron

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "jobs" / "configs" / "demo.toml")

# A stand-in `crontab` command: keeps the table in $HOME/spool, like cron's `crontab -l|-`.
FAKE_CRONTAB = """#!/bin/sh
spool="$HOME/spool"
case "$1" in
  -l) if [ -f "$spool" ]; then cat "$spool"; else echo "no crontab for $USER" >&2; exit 1; fi ;;
  -) cat > "$spool" ;;
  *) echo "usage" >&2; exit 2 ;;
esac
"""


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary HOME; no real crontab and no real unit directory is touched."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("MOCOPIPE_CRONTAB_FILE", raising=False)
    return tmp_path


@pytest.fixture
def fake_crontab(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bindir = home / "bin"
    bindir.mkdir()
    script = bindir / "crontab"
    script.write_text(FAKE_CRONTAB)
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return home / "spool"


def test_cli_install_ls_remove_with_crontab_command(fake_crontab: Path, capsys) -> None:
    fake_crontab.write_text("MAILTO=ops@example.org\n17 * * * * /usr/bin/backup\n")
    assert main(["schedule", "install", "--cron", "0 2 * * *", DEMO]) == 0
    table = fake_crontab.read_text()
    assert "17 * * * * /usr/bin/backup" in table and "MAILTO=ops@example.org" in table
    lines = table.splitlines()
    i = lines.index("# mocopipe-schedule: demo")
    assert lines[i + 1].startswith("0 2 * * * cd ")
    assert f"nightly {DEMO} --wait" in lines[i + 1]
    # Installing again replaces the entry instead of adding a second one.
    assert main(["schedule", "install", "--cron", "30 3 * * 1-5", DEMO]) == 0
    table = fake_crontab.read_text()
    assert table.count("# mocopipe-schedule: demo") == 1 and "30 3 * * 1-5 cd " in table
    capsys.readouterr()
    assert main(["schedule", "ls"]) == 0
    out = capsys.readouterr().out
    assert "demo" in out and "30 3 * * 1-5" in out
    assert main(["schedule", "remove", "demo"]) == 0
    assert fake_crontab.read_text() == "MAILTO=ops@example.org\n17 * * * * /usr/bin/backup\n"
    assert main(["schedule", "remove", "demo"]) == 1  # nothing left to remove


def test_file_backend_without_crontab_command(home: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys) -> None:
    monkeypatch.setenv("PATH", str(home / "empty-bin"))  # no crontab anywhere
    tab = Crontab.default()
    assert tab.file == home / ".config" / "mocopipe" / "crontab"
    env = home / "nightly.env"
    env.write_text("RAY_ADDRESS=http://127.0.0.1:8265\n")
    assert main(["schedule", "install", "--cron", "0 2 * * *", "--env-file", str(env), DEMO]) == 0
    out = capsys.readouterr().out  # tells the user where the entry is and how to load it
    assert str(tab.file) in out and "crontab -" in out
    entry = schedule.list_cron(tab)[0]
    assert entry.name == "demo" and entry.when == "0 2 * * *"
    assert f". {env} && set +a" in entry.command
    assert schedule.remove_cron(tab, "demo") and schedule.list_cron(tab) == []


def test_installed_command_runs_mocopipe_nightly(home: Path) -> None:
    """Run the scheduled shell command itself: it reaches `mocopipe nightly`, which fails
    cleanly (one line, exit 2) because nothing listens at the given cluster address."""
    env_file = home / "nightly.env"
    env_file.write_text("SCHEDULE_MARKER=from-env-file\n")
    cmd = schedule.nightly_command(DEMO, root=ROOT, mocopipe=[sys.executable, "-m", "pipeline.cli"],
                                   env_file=str(env_file), address="http://127.0.0.1:9")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MOCOPIPE_"))}
    done = subprocess.run(["sh", "-c", cmd + ' ; echo "rc=$? $SCHEDULE_MARKER"'], env=env,
                          capture_output=True, text=True, timeout=120)
    assert "rc=2 from-env-file" in done.stdout, done.stdout + done.stderr
    assert "cannot reach the Ray job server at http://127.0.0.1:9" in done.stderr


def test_systemd_units_written_and_removed(home: Path, capsys) -> None:
    assert main(["schedule", "install", "--systemd", "--cron", "30 1 * * 1-5", DEMO]) == 0
    unit_dir = home / ".config" / "systemd" / "user"
    timer = (unit_dir / "mocopipe-nightly-demo.timer").read_text()
    service = (unit_dir / "mocopipe-nightly-demo.service").read_text()
    assert "OnCalendar=Mon,Tue,Wed,Thu,Fri *-*-* 01:30:00" in timer
    assert "Persistent=true" in timer and "WantedBy=timers.target" in timer
    assert "Type=oneshot" in service and "nightly" in service
    capsys.readouterr()
    assert main(["schedule", "ls"]) == 0
    assert "systemd" in capsys.readouterr().out
    assert main(["schedule", "remove", "demo"]) == 0
    assert list(unit_dir.iterdir()) == []


@pytest.mark.parametrize("expr,calendar", [
    ("0 2 * * *", "*-*-* 02:00:00"),
    ("*/15 * * * *", "*-*-* *:0/15:00"),
    ("30 1 * * 1-5", "Mon,Tue,Wed,Thu,Fri *-*-* 01:30:00"),
    ("0 3 1 */2 *", "*-1/2-1 03:00:00"),
    ("5 0-12/3 * * sun", "Sun *-*-* 0,3,6,9,12:05:00"),
    ("0 0 * jan-mar 0,6", "Sun,Sat *-1..3-* 00:00:00"),
])
def test_cron_to_oncalendar(expr: str, calendar: str) -> None:
    assert cron_to_oncalendar(expr) == calendar
    analyze = shutil.which("systemd-analyze")
    if analyze:  # systemd's own parser agrees the expression is valid
        assert subprocess.run([analyze, "calendar", calendar], capture_output=True).returncode == 0


@pytest.mark.parametrize("expr,message", [
    ("0 2 * *", "5 fields"),
    ("60 2 * * *", "minute '60'"),
    ("0 24 * * *", "hour '24'"),
    ("0 2 0 * *", "day of month '0'"),
    ("0 2 * 13 *", "month '13'"),
    ("0 2 * * 8", "day of week '8'"),
    ("*/0 2 * * *", "step '0'"),
    ("0 5-2 * * *", "runs backwards"),
])
def test_bad_cron_is_named(expr: str, message: str) -> None:
    with pytest.raises(ScheduleError, match=message):
        validate_cron(expr)


def test_systemd_refuses_day_of_month_and_weekday() -> None:
    with pytest.raises(ScheduleError, match="systemd cannot express"):
        cron_to_oncalendar("0 2 1 * 1")


def test_cli_errors_are_one_line(home: Path, capsys) -> None:
    assert main(["schedule", "install", "--cron", "0 25 * * *", DEMO]) == 2
    assert "hour '25'" in capsys.readouterr().err
    assert main(["schedule", "install", "--cron", "0 2 * * *", str(home / "nope.toml")]) == 2


def test_schedule_takes_a_shipped_config_name(home: Path) -> None:
    cmd = schedule.nightly_command("demo", root=home, mocopipe=["mocopipe"])
    assert cmd.endswith("mocopipe nightly demo --wait") and cmd.startswith(f"cd {home}")
    with pytest.raises(schedule.ScheduleError, match="'no-such' does not exist"):
        schedule.nightly_command("no-such", root=home, mocopipe=["mocopipe"])
