"""Checkpoint manager: atomic, pruned checkpoints stored as artifacts of the run's MLflow run.

Layout (artifact paths, relative to the run's artifact root, never local `pathlib` paths):

    checkpoints/step-0000100/state.pt     model (incl. key encoder, queue, ptr), optimizer, ...
    checkpoints/step-0000100/ranks.pt     per-rank data cursor and RNG states
    checkpoints/step-0000100/COMPLETE     JSON {step, meta, files: {name: {sha256, bytes}}}: LAST

`meta` is what the run was at that step (manifest sha, training-config hash and values: see
`pipeline.train.fingerprint`); a resume compares it with the current run before loading.

A checkpoint is complete only when its `COMPLETE` marker exists; `load` never reads an
incomplete one and checks every file's sha256 against the marker. The last `keep` complete
checkpoints are kept; older ones (and crash leftovers) are deleted through the artifact
repository (`pipeline.train.services.ArtifactRepo`: the MLflow run's artifacts, or a local
directory). `load_newest` falls back to the previous complete checkpoint when the newest
one is corrupt.

Uploads run on a background thread (training continues while the server is slow or briefly
down); at most one upload is in flight, `save` waits for the previous one. After
`max_failures` consecutive failed uploads `save` raises: a run never trains on for hours
without a restorable state. The narrow API: `load(step=-1)`, `load_newest()`,
`save(step, files, last=False)`, `close()`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import posixpath
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

from pipeline.train.services import ArtifactRepo, MlflowArtifacts

log = logging.getLogger(__name__)

ROOT = "checkpoints"
MARKER = "COMPLETE"
_STEP_DIR = re.compile(r"^step-(\d{7,})$")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or read; the message names the artifact path."""


def mlflow_repo(run_id: str, tracking_uri: str) -> ArtifactRepo:
    """The artifact repository of an MLflow run (proxied `mlflow-artifacts:` on a server)."""
    return MlflowArtifacts(run_id, tracking_uri)


def step_dir(step: int) -> str:
    return posixpath.join(ROOT, f"step-{step:07d}")


def pack(obj: Any) -> bytes:
    """torch.save `obj` (tensors, dicts, lists, numbers, strings) to bytes."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def unpack(data: bytes) -> Any:
    """Inverse of `pack`, with `weights_only=True` (no arbitrary pickles are executed)."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


class CheckpointManager:
    """Write, find, load and prune checkpoints of one run (see the module docstring).

    repo: the run's artifact repository. every_steps: `should_save` cadence. keep: complete
    checkpoints kept. before_commit(step): called after the files are uploaded and before the
    marker (the train loop flushes the metrics up to `step` there, so a resumed run never
    misses a logged step; raising vetoes the commit). async_upload: upload on a background
    thread. max_failures: consecutive failed uploads after which `save` raises.
    """

    def __init__(self, repo: ArtifactRepo, *, every_steps: int, keep: int,
                 before_commit: Callable[[int], None] | None = None,
                 async_upload: bool = True, max_failures: int = 3) -> None:
        if every_steps < 1:
            raise ValueError(f"every_steps: {every_steps} must be >= 1")
        if keep < 1:
            raise ValueError(f"keep: {keep} must be >= 1")
        if max_failures < 1:
            raise ValueError(f"checkpoint.max_upload_failures: {max_failures} must be >= 1")
        self.repo, self.every_steps, self.keep = repo, every_steps, keep
        self.max_failures, self.failures = max_failures, 0
        self._before_commit = before_commit
        self._async = async_upload
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.saved_steps: list[int] = []

    # ------------------------------------------------------------------ finding and loading

    def should_save(self, step: int) -> bool:
        return step > 0 and step % self.every_steps == 0

    def _dirs(self) -> dict[int, str]:
        """Step directories under `checkpoints/` (possibly empty: some S3 servers, e.g.
        SeaweedFS, keep listing a prefix whose objects were all deleted)."""
        out: dict[int, str] = {}
        for info in self.repo.list(ROOT):
            name = posixpath.basename(info.path.rstrip("/"))
            m = _STEP_DIR.match(name)
            if info.is_dir and m:
                out[int(m.group(1))] = posixpath.join(ROOT, name)
        return out

    def _files(self, path: str) -> set[str]:
        return {posixpath.basename(i.path) for i in self.repo.list(path)}

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints, ascending."""
        return sorted(s for s, p in self._dirs().items() if MARKER in self._files(p))

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None (checks newest first)."""
        for s, p in sorted(self._dirs().items(), reverse=True):
            if MARKER in self._files(p):
                return s
        return None

    def load(self, step: int = -1, names: tuple[str, ...] | None = None) -> dict[str, bytes]:
        """Raw bytes of the files of checkpoint `step` (-1 = the latest complete one).

        names: the files to fetch (default: all in the marker). Each is checked against the
        marker's sha256. Raises CheckpointError when there is no such complete checkpoint.
        """
        if step == -1:
            latest = self.latest_step()
            if latest is None:
                raise CheckpointError(f"{ROOT}/: no complete checkpoint in this run")
            step = latest
        path = step_dir(step)
        with tempfile.TemporaryDirectory(prefix="mocopipe-ckpt-") as tmp:
            try:
                marker_file = self.repo.get(posixpath.join(path, MARKER), tmp)
            except Exception as exc:
                raise CheckpointError(f"{path}: not a complete checkpoint ({exc})") from exc
            try:
                with open(marker_file, encoding="utf-8") as fh:
                    marker = json.load(fh)
            except ValueError as exc:
                raise CheckpointError(f"{path}/{MARKER}: not JSON ({exc})") from exc
            out: dict[str, bytes] = {}
            for name in names or tuple(marker["files"]):
                if name not in marker["files"]:
                    raise CheckpointError(f"{path}: has no file {name!r}")
                local = self.repo.get(posixpath.join(path, name), tmp)
                with open(local, "rb") as fh:
                    data = fh.read()
                want = marker["files"][name]["sha256"]
                if hashlib.sha256(data).hexdigest() != want:
                    raise CheckpointError(f"{path}/{name}: sha256 mismatch (corrupt upload)")
                out[name] = data
        return out

    def meta(self, step: int) -> dict[str, Any]:
        """The `meta` recorded in the marker of complete checkpoint `step` ({} if none)."""
        with tempfile.TemporaryDirectory(prefix="mocopipe-ckpt-") as tmp:
            try:
                local = self.repo.get(posixpath.join(step_dir(step), MARKER), tmp)
                with open(local, encoding="utf-8") as fh:
                    return dict(json.load(fh).get("meta") or {})
            except Exception as exc:
                raise CheckpointError(f"{step_dir(step)}/{MARKER}: unreadable ({exc})") from exc

    def load_newest(self, names: tuple[str, ...] | None = None,
                    check: Callable[[dict[str, bytes]], None] | None = None
                    ) -> tuple[int, dict[str, bytes]] | None:
        """(step, files) of the newest complete checkpoint that loads, or None if there is
        none. A corrupt one (sha256 mismatch, unreadable, or `check(files)` raising
        CheckpointError) is skipped with a printed line naming it and the fallback."""
        for step in reversed(self.steps()):
            try:
                files = self.load(step, names=names)
                if check is not None:
                    check(files)
                return step, files
            except CheckpointError as exc:
                print(f"[mocopipe] checkpoint {step_dir(step)} is corrupt ({exc}); falling back "
                      f"to the previous complete checkpoint", flush=True)
        return None

    # ------------------------------------------------------------------ saving

    def save(self, step: int, files: Mapping[str, bytes], *, last: bool = False,
             meta: Mapping[str, Any] | None = None) -> None:
        """Write checkpoint `step` (`files`: name -> bytes; `meta` goes into the marker).
        `last=True` blocks until it is committed and raises CheckpointError if it failed;
        otherwise the upload runs in the background after the previous one finished."""
        if not files or MARKER in files:
            raise ValueError(f"files: expected a non-empty mapping without {MARKER!r}")
        self.wait(raise_error=False)
        tmp = tempfile.mkdtemp(prefix="mocopipe-ckpt-")
        try:
            for name, data in files.items():
                with open(os.path.join(tmp, name), "wb") as fh:
                    fh.write(data)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        marker = {"step": step, "meta": dict(meta or {}), "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "files": {n: {"sha256": hashlib.sha256(d).hexdigest(), "bytes": len(d)}
                            for n, d in files.items()}}
        if self._async and not last:
            self._thread = threading.Thread(target=self._upload, args=(step, tmp, marker),
                                            name=f"ckpt-upload-{step}", daemon=True)
            self._thread.start()
        else:
            self._upload(step, tmp, marker)
            self.wait(raise_error=True)

    def wait(self, raise_error: bool = True) -> None:
        """Block until the in-flight upload is done; re-raise its error if `raise_error`."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            self.failures += 1
            if raise_error:
                raise CheckpointError(f"checkpoint upload failed: {err}") from err
            if self.failures >= self.max_failures:
                raise CheckpointError(
                    f"checkpoint.max_upload_failures: {self.failures} consecutive checkpoint "
                    f"uploads failed (last: {err}); no restorable state, stopping") from err
            log.error("checkpoint upload failed (%d in a row; the next checkpoint will retry): "
                      "%s", self.failures, err)

    def close(self) -> None:
        """Finish the in-flight upload (raising its error)."""
        self.wait(raise_error=True)

    def _upload(self, step: int, tmp: str, marker: dict[str, Any]) -> None:
        path = step_dir(step)
        try:
            for name in marker["files"]:
                self.repo.put(os.path.join(tmp, name), path)
            if self._before_commit is not None:
                self._before_commit(step)
            marker_file = os.path.join(tmp, MARKER)
            with open(marker_file, "w", encoding="utf-8") as fh:
                json.dump(marker, fh)
            self.repo.put(marker_file, path)  # the commit point: uploaded LAST
            self.saved_steps.append(step)
            self.failures = 0
            log.info("checkpoint: committed %s", path)
            self._prune()
        except BaseException as exc:  # noqa: BLE001 - reported by wait()
            self._error = exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _prune(self) -> None:
        """Delete all but the newest `keep` complete checkpoints, and incomplete leftovers
        older than the newest complete one. Marker first, so a half-deleted checkpoint is
        never taken for a complete one."""
        files = {s: (p, self._files(p)) for s, p in self._dirs().items()}
        files = {s: v for s, v in files.items() if v[1]}  # empty prefixes: already deleted
        complete = sorted(s for s, (_, names) in files.items() if MARKER in names)
        if not complete:
            return
        kept = set(complete[-self.keep:])
        newest = complete[-1]
        for s, (p, names) in sorted(files.items()):
            if s in kept or s > newest:
                continue
            if MARKER in names:
                self.repo.delete(posixpath.join(p, MARKER))
            self.repo.delete(p)
            log.info("checkpoint: deleted %s", p)
