"""Object storage: one small API over S3 (boto3) and local paths.

URIs are ``s3://bucket/key...`` or local paths; an ``s3://`` URI never goes through
``pathlib``. Credentials come from the environment only (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, optional AWS_SESSION_TOKEN); the endpoint is
``StorageConfig.endpoint_url`` or AWS_ENDPOINT_URL; the region ``StorageConfig.region`` or
AWS_DEFAULT_REGION.

Retries: every S3 request is retried by botocore ("standard" mode, connection errors, 5xx
and throttling) up to ``max_retries`` extra attempts. Failures while *reading a response
body* are not retried by botocore; ``get_bytes`` retries those itself with a backoff that
starts at ``retry_backoff_s`` and doubles. Every failure that reaches the caller is a
``StorageError`` whose message names the URI (and the endpoint for S3) and the cause.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import threading
import time
import uuid
from typing import Any, BinaryIO, Callable, Iterator, TypeVar

from pipeline.config import StorageConfig

T = TypeVar("T")
_S3 = "s3://"
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "Forbidden"}
_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}


class StorageError(RuntimeError):
    """A storage operation failed; the message names the URI and the cause."""


class ObjectNotFound(StorageError):
    """The object (or local file) does not exist."""


class TransientStorageError(StorageError):
    """The connection broke while a response was read (timeout, reset, short body): worth
    retrying. `get_bytes` retries these itself; stream readers can catch it and reopen."""


def is_s3(uri: str) -> bool:
    return uri.startswith(_S3)


def split_s3(uri: str) -> tuple[str, str]:
    """``"s3://b/p/x"`` -> ``("b", "p/x")``. Raises StorageError for a URI without a bucket."""
    if not is_s3(uri):
        raise StorageError(f"{uri!r} is not an s3:// URI")
    rest = uri[len(_S3):]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StorageError(f"{uri!r}: missing bucket name (expected s3://bucket/prefix)")
    return bucket, key


def join(uri: str, *parts: str) -> str:
    """``join("s3://b/p", "x") -> "s3://b/p/x"``; local paths use ``os.path.join``."""
    if not is_s3(uri):
        return os.path.join(uri, *parts)
    out = uri.rstrip("/")
    for part in parts:
        part = part.strip("/")
        if part:
            out = f"{out}/{part}"
    return out


class Storage:
    """Reads and writes objects on S3 or local disk. Thread-safe; picklable (the client is
    rebuilt lazily in the receiving process)."""

    def __init__(self, cfg: StorageConfig | None = None) -> None:
        self.cfg = cfg or StorageConfig()
        self._client: Any = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ S3 plumbing

    @property
    def endpoint(self) -> str:
        """The S3 endpoint in use (for messages); "AWS default" when none is configured."""
        return self.cfg.endpoint_url or os.environ.get("AWS_ENDPOINT_URL", "") or "AWS default"

    @property
    def client(self) -> Any:
        """The boto3 S3 client (built on first use). Missing credentials -> StorageError."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._make_client()
        return self._client

    def _make_client(self) -> Any:
        import boto3
        from botocore.config import Config as BotoConfig

        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            if not os.environ.get(var):
                raise StorageError(
                    f"S3 credentials missing: environment variable {var} is not set "
                    f"(endpoint {self.endpoint}; credentials come from the environment only; "
                    f"`mocopipe env` prints them for the local stack)")
        c = self.cfg
        boto_cfg = BotoConfig(
            region_name=c.region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
            retries={"total_max_attempts": c.max_retries + 1, "mode": "standard"},
            connect_timeout=c.connect_timeout_s,
            read_timeout=c.read_timeout_s,
            s3={"addressing_style": "path"},
            max_pool_connections=32,
        )
        session = boto3.session.Session()
        return session.client(
            "s3",
            endpoint_url=c.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None,
            aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
            aws_session_token=os.environ.get("AWS_SESSION_TOKEN") or None,
            config=boto_cfg,
        )

    def __getstate__(self) -> dict[str, Any]:
        return {"cfg": self.cfg}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["cfg"])  # type: ignore[misc]

    @contextlib.contextmanager
    def _errors(self, uri: str, what: str) -> Iterator[None]:
        """Translate botocore exceptions into StorageError naming the URI and endpoint."""
        from boto3.exceptions import S3TransferFailedError, S3UploadFailedError
        from botocore import exceptions as bx

        where = f"{uri} (endpoint {self.endpoint})"
        try:
            yield
        except StorageError:
            raise
        except bx.ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            msg = err.get("Message") or code
            bucket = split_s3(uri)[0] if is_s3(uri) else uri
            if code == "NoSuchBucket" or (code in _NOT_FOUND and what == "head_bucket"):
                raise StorageError(f"{what} {where}: bucket {bucket!r} does not exist") from exc
            if code in _NOT_FOUND:
                raise ObjectNotFound(f"{what} {where}: no such object") from exc
            if code in _DENIED:
                raise StorageError(
                    f"{what} {where}: access to bucket {bucket!r} denied ({code}: {msg}); "
                    f"check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY") from exc
            raise StorageError(f"{what} {where}: {code}: {msg}") from exc
        except bx.NoCredentialsError as exc:
            raise StorageError(f"{what} {where}: no S3 credentials in the environment") from exc
        except (bx.EndpointConnectionError, bx.ConnectTimeoutError) as exc:
            raise StorageError(
                f"{what} {uri}: cannot connect to S3 endpoint {self.endpoint} ({exc}); "
                f"is the server running (`mocopipe up`)?") from exc
        except (bx.ReadTimeoutError, bx.ConnectionClosedError, bx.IncompleteReadError,
                bx.ResponseStreamingError) as exc:
            raise TransientStorageError(f"{what} {where}: connection failed: {exc}") from exc
        except bx.BotoCoreError as exc:
            raise StorageError(f"{what} {where}: {exc}") from exc
        except (S3UploadFailedError, S3TransferFailedError) as exc:  # wraps the cause's text
            raise StorageError(f"{what} {where}: {exc}") from exc

    def _with_backoff(self, fn: Callable[[], T], uri: str, what: str) -> T:
        """Run `fn`, retrying TransientStorageError (a broken body read, which botocore does
        not retry) up to cfg.max_retries times, backoff from cfg.retry_backoff_s, doubling."""
        delay = self.cfg.retry_backoff_s
        for attempt in range(self.cfg.max_retries + 1):
            try:
                with self._errors(uri, what):
                    return fn()
            except TransientStorageError:
                if attempt == self.cfg.max_retries:
                    raise
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------------ API

    def check_access(self, uri: str) -> None:
        """Fail early: missing creds / wrong creds / missing bucket / no server -> StorageError.
        Local: the nearest existing ancestor must be a directory."""
        if is_s3(uri):
            bucket, _ = split_s3(uri)
            with self._errors(uri, "head_bucket"):
                self.client.head_bucket(Bucket=bucket)
            return
        probe = os.path.abspath(uri)
        while not os.path.exists(probe):
            probe = os.path.dirname(probe)
        if os.path.isfile(probe) and probe != os.path.abspath(uri):
            raise StorageError(f"{uri}: {probe} is a file, not a directory")

    def put_bytes(self, uri: str, data: bytes) -> None:
        """Write `data` (local: temp file + os.replace, so readers never see a partial file)."""
        if is_s3(uri):
            bucket, key = split_s3(uri)
            with self._errors(uri, "put_object"):
                self.client.put_object(Bucket=bucket, Key=key, Body=data)
            return
        self._local_atomic(uri, lambda f: f.write(data))

    def put_file(self, uri: str, path: str, metadata: dict[str, str] | None = None) -> None:
        """Upload a local file (multipart above storage.multipart_threshold_mb).

        `metadata` (S3 only: user metadata, x-amz-meta-*) is returned by `metadata(uri)`.
        """
        if is_s3(uri):
            from boto3.s3.transfer import TransferConfig

            mb = 2**20
            tc = TransferConfig(multipart_threshold=self.cfg.multipart_threshold_mb * mb,
                                multipart_chunksize=self.cfg.multipart_chunk_mb * mb,
                                max_concurrency=4)
            bucket, key = split_s3(uri)
            with self._errors(uri, "upload"):
                self.client.upload_file(path, bucket, key, Config=tc,
                                        ExtraArgs={"Metadata": dict(metadata or {})})
            return
        with open(path, "rb") as src:
            self._local_atomic(uri, lambda f: shutil.copyfileobj(src, f, 4 * 2**20))

    def _local_atomic(self, path: str, write: Callable[[BinaryIO], Any]) -> None:
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
            os.replace(tmp, path)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            if isinstance(exc, OSError):
                raise StorageError(f"write {path}: {exc}") from exc
            raise

    def get_bytes(self, uri: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes [start, end) of the object (end=None: to the end)."""
        if start < 0 or (end is not None and end < start):
            raise ValueError(f"get_bytes {uri}: bad range start={start} end={end}")
        if end is not None and end == start:
            return b""
        if not is_s3(uri):
            try:
                with open(uri, "rb") as f:
                    f.seek(start)
                    return f.read() if end is None else f.read(end - start)
            except FileNotFoundError as exc:
                raise ObjectNotFound(f"read {uri}: no such file") from exc
            except OSError as exc:
                raise StorageError(f"read {uri}: {exc}") from exc
        bucket, key = split_s3(uri)
        rng = f"bytes={start}-" + ("" if end is None else str(end - 1))

        def fetch() -> bytes:
            kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
            if start or end is not None:
                kwargs["Range"] = rng
            try:
                resp = self.client.get_object(**kwargs)
            except Exception as exc:  # noqa: BLE001 - an empty range past the end is b""
                if _code(exc) == "InvalidRange":
                    return b""
                raise
            return resp["Body"].read()

        return self._with_backoff(fetch, uri, "get_object")

    def get_stream(self, uri: str, start: int = 0) -> tuple[Any, int]:
        """Open the object for sequential reading from byte `start`.

        Returns ``(body, total_size)``: `body` has ``.read(n)`` and ``.close()`` (a boto3
        StreamingBody or a local file object positioned at `start`); `total_size` is the size
        of the whole object, so ``total_size - start`` bytes remain.
        """
        if start < 0:
            raise ValueError(f"get_stream {uri}: start={start} must be >= 0")
        if not is_s3(uri):
            try:
                f = open(uri, "rb")
            except FileNotFoundError as exc:
                raise ObjectNotFound(f"open {uri}: no such file") from exc
            except OSError as exc:
                raise StorageError(f"open {uri}: {exc}") from exc
            total = os.fstat(f.fileno()).st_size
            f.seek(min(start, total))
            return f, total
        bucket, key = split_s3(uri)
        with self._errors(uri, "get_object"):
            try:
                resp = self.client.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-")
            except Exception as exc:  # noqa: BLE001
                if _code(exc) != "InvalidRange":
                    raise
                total = self.size(uri)
                if total is None:
                    raise ObjectNotFound(f"get_object {uri}: no such object") from exc
                return io.BytesIO(b""), total
        content_range = resp.get("ContentRange") or ""
        if "/" in content_range and not content_range.endswith("/*"):
            total = int(content_range.rsplit("/", 1)[1])
        else:  # a server that ignores Range for bytes=0- answers 200 with the whole object
            total = int(resp["ContentLength"]) + (start if content_range else 0)
        return resp["Body"], total

    def get_range(self, uri: str, start: int, end: int) -> tuple[bytes, int, str]:
        """One attempt at bytes [start, end) (clipped to the object's end), no retries.

        Returns ``(data, total_size, version)``; `version` is the S3 ETag (local: size and
        mtime), so a caller reading one object in several requests can tell that it changed.
        """
        if start < 0 or end <= start:
            raise ValueError(f"get_range {uri}: bad range start={start} end={end}")
        if not is_s3(uri):
            try:
                with open(uri, "rb") as f:
                    st = os.fstat(f.fileno())
                    f.seek(start)
                    return f.read(end - start), st.st_size, f"{st.st_size}-{st.st_mtime_ns}"
            except FileNotFoundError as exc:
                raise ObjectNotFound(f"read {uri}: no such file") from exc
            except OSError as exc:
                raise StorageError(f"read {uri}: {exc}") from exc
        bucket, key = split_s3(uri)
        with self._errors(uri, "get_object"):
            resp = self.client.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}")
            data = resp["Body"].read()
        total = int(str(resp.get("ContentRange") or "/0").rsplit("/", 1)[1])
        return data, total, str(resp.get("ETag", ""))

    def version(self, uri: str) -> str | None:
        """The object's version tag as `get_range` reports it; None when it does not exist."""
        if not is_s3(uri):
            if not os.path.isfile(uri):
                return None
            st = os.stat(uri)
            return f"{st.st_size}-{st.st_mtime_ns}"
        resp = self._head(uri)
        return None if resp is None else str(resp.get("ETag", ""))

    def exists(self, uri: str) -> bool:
        return self.size(uri) is not None

    def size(self, uri: str) -> int | None:
        """Size in bytes, or None when the object does not exist."""
        if not is_s3(uri):
            return os.path.getsize(uri) if os.path.isfile(uri) else None
        resp = self._head(uri)
        return None if resp is None else int(resp["ContentLength"])

    def metadata(self, uri: str) -> dict[str, str] | None:
        """S3 user metadata of the object ({} for local files); None when it does not exist."""
        if not is_s3(uri):
            return {} if os.path.isfile(uri) else None
        resp = self._head(uri)
        if resp is None:
            return None
        return {str(k).lower(): str(v) for k, v in resp.get("Metadata", {}).items()}

    def _head(self, uri: str) -> dict[str, Any] | None:
        """HEAD of an S3 object, or None when it does not exist."""
        bucket, key = split_s3(uri)
        try:
            with self._errors(uri, "head_object"):
                return self.client.head_object(Bucket=bucket, Key=key)
        except ObjectNotFound:
            return None

    def list(self, prefix_uri: str) -> list[str]:
        """Every object under the "folder" `prefix_uri` (recursive), as full URIs, sorted."""
        if not is_s3(prefix_uri):
            if not os.path.isdir(prefix_uri):
                return []
            found = [os.path.join(root, name)
                     for root, _, names in os.walk(prefix_uri) for name in names]
            return sorted(found)
        bucket, prefix = split_s3(prefix_uri)
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        out: list[str] = []
        with self._errors(prefix_uri, "list_objects_v2"):
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                         Prefix=prefix)
            for page in pages:
                out.extend(f"{_S3}{bucket}/{obj['Key']}" for obj in page.get("Contents", []))
        return sorted(out)

    def delete(self, uri: str) -> None:
        """Remove the object; a missing object is not an error."""
        if not is_s3(uri):
            with contextlib.suppress(FileNotFoundError):
                os.remove(uri)
            return
        bucket, key = split_s3(uri)
        with self._errors(uri, "delete_object"):
            self.client.delete_object(Bucket=bucket, Key=key)


def _code(exc: BaseException) -> str:
    """The S3 error code of a botocore ClientError ("" for anything else)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""
