"""The local-filesystem backend: paths, atomic writes (temp file + os.replace).

ETag of a file: ``"<inode>-<mtime_ns>-<size>"`` in hex. Every write goes to a fresh temp file
that replaces the old one, so each write gets a new inode and hence a new ETag, even for the
same bytes. Conditional writes hold an exclusive `flock` on the parent directory from the
check to the rename, so two conditional writers on one machine (or on a filesystem with
working `flock`) cannot both win; `if_none_match` additionally creates with `os.link`, which
fails if anything at all created the file first.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from pipeline.storage.base import (
    ObjectInfo,
    ObjectNotFound,
    PreconditionFailed,
    StorageError,
    check_condition,
    check_range,
)


def _etag(st: os.stat_result) -> str:
    return f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"


def _check_version(uri: str, f: BinaryIO, if_match: str | None) -> None:
    """PreconditionFailed unless the open file `f` is version `if_match` (None: any)."""
    if if_match is not None:
        now = _etag(os.fstat(f.fileno()))  # of the file opened, not of a later replacement
        if now != if_match:
            raise PreconditionFailed(f"read {uri}: the object changed (ETag {if_match} -> {now})")


class LocalBackend:
    """Objects are files; a "folder" prefix is a directory. Stateless, hence picklable."""

    credential_source = ""  # the filesystem's own permissions apply

    def check_access(self, uri: str) -> None:
        """The nearest existing ancestor of `uri` must be a directory."""
        probe = os.path.abspath(uri)
        while not os.path.exists(probe):
            probe = os.path.dirname(probe)
        if os.path.isfile(probe) and probe != os.path.abspath(uri):
            raise StorageError(f"{uri}: {probe} is a file, not a directory")

    def put_bytes(self, uri: str, data: bytes, *, if_match: str | None = None,
                  if_none_match: bool = False) -> str:
        check_condition(uri, if_match, if_none_match)
        if if_match is None and not if_none_match:
            return self._atomic(uri, lambda f: f.write(data))

        def commit(tmp: str) -> None:
            with self._dir_lock(uri):
                if if_none_match:
                    _create(tmp, uri)
                    return
                info = self.head(uri)
                if info is None or info.etag != if_match:
                    now = "it no longer exists" if info is None else f"it is now {info.etag}"
                    raise PreconditionFailed(
                        f"put {uri}: object changed since version {if_match} ({now})")
                os.replace(tmp, uri)

        return self._atomic(uri, lambda f: f.write(data), commit)

    def put_file(self, uri: str, path: str, metadata: dict[str, str] | None = None, *,
                 if_none_match: bool = False) -> None:
        commit = None
        if if_none_match:
            def commit(tmp: str) -> None:
                with self._dir_lock(uri):
                    _create(tmp, uri)
        with open(path, "rb") as src:
            self._atomic(uri, lambda f: shutil.copyfileobj(src, f, 4 * 2**20), commit)

    def get_bytes(self, uri: str, start: int = 0, end: int | None = None, *,
                  if_match: str | None = None) -> bytes:
        check_range(uri, start, end)
        if end is not None and end == start:
            return b""
        try:
            with open(uri, "rb") as f:
                _check_version(uri, f, if_match)
                f.seek(start)
                return f.read() if end is None else f.read(end - start)
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"read {uri}: no such file") from exc
        except OSError as exc:
            raise StorageError(f"read {uri}: {exc}") from exc

    def get_stream(self, uri: str, start: int = 0, *,
                   if_match: str | None = None) -> tuple[Any, int]:
        if start < 0:
            raise ValueError(f"get_stream {uri}: start={start} must be >= 0")
        try:
            f = open(uri, "rb")  # noqa: SIM115 - returned to the caller, who closes it
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"open {uri}: no such file") from exc
        except OSError as exc:
            raise StorageError(f"open {uri}: {exc}") from exc
        try:
            _check_version(uri, f, if_match)
        except PreconditionFailed:
            f.close()
            raise
        total = os.fstat(f.fileno()).st_size
        f.seek(min(start, total))
        return f, total

    def get_range(self, uri: str, start: int, end: int) -> tuple[bytes, int, str]:
        try:
            with open(uri, "rb") as f:
                st = os.fstat(f.fileno())
                f.seek(start)
                return f.read(end - start), st.st_size, _etag(st)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise ObjectNotFound(f"read {uri}: no such file") from exc
        except OSError as exc:
            raise StorageError(f"read {uri}: {exc}") from exc

    def head(self, uri: str) -> ObjectInfo | None:
        try:
            st = os.stat(uri)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise StorageError(f"stat {uri}: {exc}") from exc
        if not os.path.isfile(uri):
            return None
        return ObjectInfo(size=st.st_size, etag=_etag(st), metadata={})

    def list(self, prefix_uri: str) -> list[str]:
        if not os.path.isdir(prefix_uri):
            return []
        return sorted(os.path.join(root, name)
                      for root, _, names in os.walk(prefix_uri) for name in names)

    def list_info(self, prefix_uri: str) -> list[tuple[str, ObjectInfo]]:
        out = []
        for uri in self.list(prefix_uri):
            info = self.head(uri)
            if info is not None:  # not removed since the walk
                out.append((uri, info))
        return out

    def delete(self, uri: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(uri)

    # ------------------------------------------------------------------ internals

    @contextlib.contextmanager
    def _dir_lock(self, uri: str) -> Iterator[None]:
        """Exclusive flock on the parent directory of `uri` (released on exit)."""
        fd = os.open(os.path.dirname(os.path.abspath(uri)), os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the lock

    def _atomic(self, path: str, write: Callable[[BinaryIO], Any],
                commit: Callable[[str], None] | None = None) -> str:
        """Write a temp file next to `path`, then `commit(tmp)` (default: os.replace);
        return the ETag of the file written. The temp file never outlives a failure."""
        folder = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.",
                                       suffix=f".{uuid.uuid4().hex[:8]}.tmp")
        except OSError as exc:
            raise StorageError(f"write {path}: {exc}") from exc
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual file mode
            etag = _etag(os.stat(tmp))  # link/rename keep inode, mtime and size
            (commit or (lambda t: os.replace(t, path)))(tmp)
            return etag
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            if isinstance(exc, OSError):
                raise StorageError(f"write {path}: {exc}") from exc
            raise


def _create(tmp: str, uri: str) -> None:
    """Move the finished temp file `tmp` to `uri` only if no file has that name (the local
    If-None-Match: os.link is an atomic create); else PreconditionFailed."""
    try:
        os.link(tmp, uri)
    except FileExistsError:
        raise PreconditionFailed(f"put {uri}: object already exists (if_none_match)") from None
    os.remove(tmp)
