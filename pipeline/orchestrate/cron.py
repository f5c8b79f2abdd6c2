"""Schedule `mocopipe nightly CONFIG` on this machine: a crontab entry or a systemd user timer.

Crontab: every entry we own is two lines, a marker comment `# mocopipe-schedule: NAME` and
the cron line, so `ls`/`remove` never touch anyone else's entries. With a `crontab` command
on PATH the table is read with `crontab -l` and written with `crontab -`; without one (a
container, a minimal image) the table is kept in `$HOME/.config/mocopipe/crontab` and the
caller tells the user to load it with `crontab FILE` once cron is installed.
MOCOPIPE_CRONTAB_FILE forces that file backend at another path.

systemd: `mocopipe-nightly-NAME.service` (oneshot) + `.timer` (OnCalendar converted from
the cron expression, Persistent=true so a night missed while the machine was off runs at
the next boot) under `$HOME/.config/systemd/user`.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

MARK = "# mocopipe-schedule: "
UNIT_PREFIX = "mocopipe-nightly-"
_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12),
           ("day of week", 0, 7))
_NAMES = {3: ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"],
          4: ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]}
_SYSTEMD_DOW = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")


class ScheduleError(ValueError):
    """A bad schedule request; the message names the input."""


@dataclass(frozen=True)
class Entry:
    """One schedule we own: its name, how it fires, and the command it runs."""

    name: str
    kind: str  # "cron" | "systemd"
    when: str  # cron expression, or the timer's OnCalendar
    command: str
    where: str  # the crontab backend or the unit file


# ----------------------------------------------------------------------------- cron syntax


def _atom(value: str, field: int) -> int:
    name, lo, hi = _FIELDS[field]
    names = _NAMES.get(field)
    if names and value.lower() in names:
        return names.index(value.lower()) + (1 if field == 3 else 0)
    if not value.isdigit() or not lo <= int(value) <= hi:
        raise ScheduleError(f"--cron: {name} {value!r} is not a number in [{lo}, {hi}]")
    return int(value)


def _parse_field(text: str, field: int) -> list[tuple[int | None, int | None, int | None]]:
    """`*`, `*/s`, `a`, `a-b`, `a-b/s`, and comma lists -> [(start, stop, step)]."""
    parts = []
    for item in text.split(","):
        rng, _, step_text = item.partition("/")
        step = None
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ScheduleError(f"--cron: {_FIELDS[field][0]} step {step_text!r} must be >= 1")
            step = int(step_text)
        if rng == "*":
            parts.append((None, None, step))
        elif "-" in rng:
            a, b = (_atom(v, field) for v in rng.split("-", 1))
            if a > b:
                raise ScheduleError(f"--cron: {_FIELDS[field][0]} range {rng!r} runs backwards")
            parts.append((a, b, step))
        elif step is None:
            parts.append((_atom(rng, field), None, None))
        else:
            parts.append((_atom(rng, field), _FIELDS[field][2], step))
    return parts


def validate_cron(expr: str) -> str:
    """Check a 5-field cron expression (minute hour day-of-month month day-of-week)."""
    fields = expr.split()
    if len(fields) != 5:
        raise ScheduleError(f"--cron: {expr!r} must have 5 fields (minute hour day month "
                            "weekday), e.g. \"0 2 * * *\"")
    for i, text in enumerate(fields):
        _parse_field(text, i)
    return " ".join(fields)


def cron_to_oncalendar(expr: str) -> str:
    """The systemd OnCalendar= equivalent of a cron expression.

    Cron fires when day-of-month OR day-of-week matches (if both are restricted); systemd
    needs both, so that combination is refused rather than silently changed.
    """
    minute, hour, dom, month, dow = validate_cron(expr).split()
    if dom != "*" and dow != "*":
        raise ScheduleError(f"--cron: {expr!r} restricts both day of month and day of week, "
                            "which systemd cannot express; use crontab (drop --systemd)")

    def conv(text: str, field: int) -> str:
        out = []
        for a, b, step in _parse_field(text, field):
            if field == 4:
                first, last = (0, 6) if a is None else (a, a if b is None else b)
                days = range(first, last + 1, step or 1)
                out.append(",".join(dict.fromkeys(_SYSTEMD_DOW[d] for d in days)))
                continue
            lo = _FIELDS[field][1]
            if a is None:
                out.append("*" if step is None else f"{lo}/{step}")
            elif b is None:
                out.append(f"{a:02d}" if field < 2 else str(a))
            else:
                out.append(f"{a}..{b}" if step is None
                           else ",".join(str(v) for v in range(a, b + 1, step)))
        return ",".join(out)

    days = "" if dow == "*" else conv(dow, 4) + " "
    return f"{days}*-{conv(month, 3)}-{conv(dom, 2)} {conv(hour, 1)}:{conv(minute, 0)}:00"


def check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise ScheduleError(f"schedule name {name!r} must be letters, digits, '-' or '_'")
    return name


# ----------------------------------------------------------------------------- the command


def nightly_command(config: str, *, root: Path, mocopipe: list[str], env_file: str | None = None,
                    address: str | None = None, log_file: str | None = None) -> str:
    """The shell command a schedule runs: load the env file (credentials stay in it), then
    `mocopipe nightly CONFIG --wait` against the configured cluster, appending to a log."""
    from pipeline.config import shipped_configs

    cfg = Path(config).resolve()
    if cfg.is_file():
        target = str(cfg)
    elif config in shipped_configs():  # a shipped config's name stays a name
        target = config
    else:
        raise ScheduleError(f"config {config!r} does not exist")
    argv = [*mocopipe, "nightly", target, "--wait"]
    if address:
        argv += ["--address", address]
    parts = [f"cd {shlex.quote(str(root))}"]
    if env_file:
        env = Path(env_file).resolve()
        if not env.is_file():
            raise ScheduleError(f"--env-file {env_file!r} does not exist")
        parts.append(f"set -a && . {shlex.quote(str(env))} && set +a")
    cmd = " && ".join(parts + [shlex.join(argv)])
    if log_file:
        cmd += f" >> {shlex.quote(log_file)} 2>&1"
    if "%" in cmd:  # cron turns % into a newline
        raise ScheduleError(f"command {cmd!r} contains '%', which cron would mangle")
    return cmd


# ----------------------------------------------------------------------------- crontab


class Crontab:
    """The user's crontab through `crontab -l` / `crontab -`, or a plain file."""

    def __init__(self, command: str | None = None, file: Path | None = None) -> None:
        if (command is None) == (file is None):
            raise ValueError("Crontab: give exactly one of command= or file=")
        self.command, self.file = command, file

    @classmethod
    def default(cls) -> "Crontab":
        forced = os.environ.get("MOCOPIPE_CRONTAB_FILE")
        if forced:
            return cls(file=Path(forced))
        found = shutil.which("crontab")
        if found:
            return cls(command=found)
        return cls(file=Path.home() / ".config" / "mocopipe" / "crontab")

    def describe(self) -> str:
        return f"crontab ({self.command})" if self.command else f"crontab file {self.file}"

    def read(self) -> str:
        if self.file is not None:
            return self.file.read_text() if self.file.exists() else ""
        done = subprocess.run([self.command, "-l"], capture_output=True, text=True)
        if done.returncode != 0:
            if "no crontab" in done.stderr.lower():
                return ""
            raise ScheduleError(f"`crontab -l` failed: {done.stderr.strip()}")
        return done.stdout

    def write(self, text: str) -> None:
        if self.file is not None:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.file.with_name(self.file.name + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, self.file)
            return
        done = subprocess.run([self.command, "-"], input=text, capture_output=True, text=True)
        if done.returncode != 0:
            raise ScheduleError(f"`crontab -` refused the new table: {done.stderr.strip()}")


def _split(text: str) -> tuple[list[str], dict[str, tuple[str, str]]]:
    """(foreign lines, {name: (cron expr, command)}) of a crontab."""
    lines, ours, rest = text.splitlines(), {}, []
    i = 0
    while i < len(lines):
        if lines[i].startswith(MARK) and i + 1 < len(lines):
            fields = lines[i + 1].split(None, 5)
            command = fields[5] if len(fields) > 5 else ""
            ours[lines[i][len(MARK):].strip()] = (" ".join(fields[:5]), command)
            i += 2
        else:
            rest.append(lines[i])
            i += 1
    return rest, ours


def _join(rest: list[str], ours: dict[str, tuple[str, str]]) -> str:
    out = list(rest)
    for name, (expr, command) in sorted(ours.items()):
        out += [f"{MARK}{name}", f"{expr} {command}"]
    return "\n".join(out) + "\n" if out else ""


def install_cron(tab: Crontab, name: str, expr: str, command: str) -> None:
    """Add or replace the entry `name` (other entries are kept as they are)."""
    rest, ours = _split(tab.read())
    ours[check_name(name)] = (validate_cron(expr), command)
    tab.write(_join(rest, ours))


def remove_cron(tab: Crontab, name: str) -> bool:
    rest, ours = _split(tab.read())
    if ours.pop(name, None) is None:
        return False
    tab.write(_join(rest, ours))
    return True


def list_cron(tab: Crontab) -> list[Entry]:
    _, ours = _split(tab.read())
    return [Entry(n, "cron", e, c, tab.describe()) for n, (e, c) in sorted(ours.items())]


# ----------------------------------------------------------------------------- systemd


def unit_dir() -> Path:
    return Path.home() / ".config" / "systemd" / "user"


def systemd_units(name: str, expr: str, command: str) -> tuple[str, str]:
    """(service, timer) unit texts for schedule `name`."""
    calendar = cron_to_oncalendar(expr)
    service = (f"[Unit]\nDescription=mocopipe nightly pretraining ({name})\n"
               "Wants=network-online.target\nAfter=network-online.target\n\n"
               f"[Service]\nType=oneshot\nExecStart=/bin/sh -c {shlex.quote(command)}\n")
    timer = (f"[Unit]\nDescription=mocopipe nightly pretraining ({name}), cron \"{expr}\"\n\n"
             f"[Timer]\nOnCalendar={calendar}\nPersistent=true\n"
             f"Unit={UNIT_PREFIX}{name}.service\n\n"
             "[Install]\nWantedBy=timers.target\n")
    return service, timer


def install_systemd(name: str, expr: str, command: str,
                    directory: Path | None = None) -> list[Path]:
    d = directory or unit_dir()
    d.mkdir(parents=True, exist_ok=True)
    service, timer = systemd_units(check_name(name), expr, command)
    paths = [d / f"{UNIT_PREFIX}{name}.service", d / f"{UNIT_PREFIX}{name}.timer"]
    for path, text in zip(paths, (service, timer)):
        path.write_text(text)
    return paths


def remove_systemd(name: str, directory: Path | None = None) -> list[Path]:
    d = directory or unit_dir()
    gone = []
    for suffix in (".service", ".timer"):
        path = d / f"{UNIT_PREFIX}{name}{suffix}"
        if path.exists():
            path.unlink()
            gone.append(path)
    return gone


def list_systemd(directory: Path | None = None) -> list[Entry]:
    d = directory or unit_dir()
    out = []
    for timer in sorted(d.glob(f"{UNIT_PREFIX}*.timer")) if d.is_dir() else []:
        name = timer.name[len(UNIT_PREFIX):-len(".timer")]
        cal = next((ln.split("=", 1)[1] for ln in timer.read_text().splitlines()
                    if ln.startswith("OnCalendar=")), "?")
        service = timer.with_suffix(".service")
        cmd = next((ln.split("=", 1)[1] for ln in service.read_text().splitlines()
                    if ln.startswith("ExecStart=")), "?") if service.exists() else "?"
        out.append(Entry(name, "systemd", cal, cmd, str(timer)))
    return out
