"""Process and port helpers for the local stack: loopback ports, start, wait, stop by PID.

Everything here works on explicit PIDs (checked against their start time, so a recycled PID
is never signalled) and never on process names: several stacks, of several users, may run
side by side on one machine.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

LOOPBACK = "127.0.0.1"
# Pinned ports are drawn below the kernel's ephemeral range, so that outgoing connections
# (which take ephemeral ports) cannot grab a port between our pick and the server's bind.
_PORT_FLOOR = 15000


class StackError(RuntimeError):
    """The local stack could not be started, reached or stopped; the message says why."""


@dataclass(frozen=True)
class ProcRef:
    """A process identified by PID *and* start time (a PID alone may be reused)."""

    pid: int
    create_time: float
    name: str

    @classmethod
    def of(cls, pid: int) -> ProcRef:
        p = psutil.Process(pid)
        return cls(pid=pid, create_time=p.create_time(), name=p.name())

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> ProcRef:
        return cls(pid=int(d["pid"]), create_time=float(d["create_time"]),  # type: ignore[arg-type]
                   name=str(d.get("name", "")))

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def process(self) -> psutil.Process | None:
        """The live process, or None when it exited (zombies count as exited)."""
        try:
            p = psutil.Process(self.pid)
            if abs(p.create_time() - self.create_time) > 0.01:
                return None  # the PID was recycled by an unrelated process
            if p.status() == psutil.STATUS_ZOMBIE:
                return None
            return p
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None

    def alive(self) -> bool:
        return self.process() is not None


# ----------------------------------------------------------------------------- ports


def port_free(port: int, host: str = LOOPBACK) -> bool:
    """True when a server could bind `host:port` now (SO_REUSEADDR, as servers use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def who_listens(port: int) -> str:
    """A short description of the process listening on `port`, for error messages."""
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN:
                if conn.pid:
                    try:
                        cmd = " ".join(psutil.Process(conn.pid).cmdline()[:3])
                    except psutil.Error:
                        cmd = "?"
                    return f"pid {conn.pid} ({cmd})"
                return "another process"
    except psutil.Error:
        pass
    return "another process"


def require_free(port: int, what: str) -> None:
    """Raise StackError naming the port, its use and its current owner when it is taken."""
    if not port_free(port):
        raise StackError(f"port {port} for {what} on {LOOPBACK} is already in use by "
                         f"{who_listens(port)}; choose another port or stop that process")


def _port_ceiling() -> int:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return max(low, _PORT_FLOOR + 2000)


def pick_ports(n: int, *, span: int = 1, avoid: Iterable[int] = (),
               rng: random.Random | None = None) -> list[int]:
    """`n` free loopback port blocks of `span` consecutive ports each; returns first ports.

    Drawn at random below the ephemeral range so two stacks started at once rarely collide
    (each server still fails loudly on a bind error, and `up` reports it).
    """
    rng = rng or random.Random()
    taken = set(avoid)
    out: list[int] = []
    hi = _port_ceiling() - span
    for _ in range(20000):
        if len(out) == n:
            return out
        base = rng.randrange(_PORT_FLOOR, hi)
        block = range(base, base + span)
        if any(p in taken for p in block) or not all(port_free(p) for p in block):
            continue
        out.append(base)
        taken.update(block)
    raise StackError(f"could not find {n} free port block(s) of {span} on {LOOPBACK}")


# ----------------------------------------------------------------------------- processes


def find_binary(name: str) -> str:
    """`name` next to the running interpreter (the venv's bin/), else on PATH."""
    import shutil
    import sys

    local = Path(sys.executable).parent / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise StackError(f"{name!r} not found next to {sys.executable} nor on PATH "
                         f"(is the virtualenv installed? try `make up`)")
    return found


def spawn(cmd: Sequence[str], *, env: Mapping[str, str], log_path: Path,
          cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start `cmd` in its own session, stdout+stderr appended to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(cmd)}\n".encode())
        log.flush()
        return subprocess.Popen(list(cmd), env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def tail(path: Path, lines: int = 25) -> str:
    """The last `lines` lines of a log file ("" if it does not exist)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def wait_until(check: Callable[[], bool], *, what: str, timeout_s: float, log_path: Path,
               proc: subprocess.Popen[bytes] | None = None, interval_s: float = 0.25) -> None:
    """Poll `check()` until true; on timeout or early exit raise StackError with the log tail."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - any failure of a probe means "not yet"
            pass
        if proc is not None and proc.poll() is not None:
            raise StackError(f"{what} exited with code {proc.returncode} during start-up; "
                             f"last lines of {log_path}:\n{tail(log_path)}")
        if time.monotonic() > deadline:
            raise StackError(f"{what} not healthy after {timeout_s:.0f}s; "
                             f"last lines of {log_path}:\n{tail(log_path)}")
        time.sleep(interval_s)


def tree(refs: Iterable[ProcRef]) -> list[ProcRef]:
    """`refs` that are alive plus all their live descendants (deduplicated)."""
    out: dict[int, ProcRef] = {}
    for ref in refs:
        p = ref.process()
        if p is None:
            continue
        out[ref.pid] = ref
        try:
            for child in p.children(recursive=True):
                try:
                    out.setdefault(child.pid, ProcRef(child.pid, child.create_time(),
                                                      child.name()))
                except psutil.Error:
                    continue
        except psutil.Error:
            continue
    return list(out.values())


def find_by_marker(marker: str) -> list[ProcRef]:
    """Live processes whose command line contains `marker` (e.g. a unique temp dir)."""
    me = os.getpid()
    out: list[ProcRef] = []
    for p in psutil.process_iter(["pid", "cmdline", "create_time", "name"]):
        try:
            cmd = p.info["cmdline"] or []
            if p.info["pid"] != me and any(marker in part for part in cmd):
                out.append(ProcRef(p.info["pid"], p.info["create_time"], p.info["name"] or ""))
        except psutil.Error:
            continue
    return out


def _reap(p: psutil.Process) -> None:
    """Collect the exit status of our own children so they do not linger as zombies."""
    try:
        os.waitpid(p.pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _wait_gone(refs: list[ProcRef], timeout_s: float) -> list[ProcRef]:
    deadline = time.monotonic() + timeout_s
    left = refs
    while left:
        for ref in left:
            p = ref.process()
            if p is not None:
                _reap(p)
        left = [r for r in left if r.alive()]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    return left


def stop(refs: Iterable[ProcRef], *, timeout_s: float = 10.0) -> list[int]:
    """SIGTERM every live process in `refs`, wait, SIGKILL survivors. Returns PIDs signalled.

    A zombie counts as stopped; our own children are reaped.
    """
    live = [r for r in dict.fromkeys(refs) if r.alive()]
    for ref in live:
        p = ref.process()
        try:
            if p is not None:
                p.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    survivors = _wait_gone(live, timeout_s)
    for ref in survivors:
        p = ref.process()
        try:
            if p is not None:
                p.kill()
        except psutil.Error:
            pass
    _wait_gone(survivors, 5.0)
    return [r.pid for r in live]
