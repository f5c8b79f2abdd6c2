"""The S3 backend (boto3): any S3-compatible store, credentials from boto3's default chain.

Credentials: boto3 resolves them itself, in its usual order (environment variables, the
shared credentials/config files with AWS_PROFILE, SSO, web identity / IRSA, container
credentials, EC2 instance role). They are never read or passed by this module; when the chain
finds nothing, the client is not built and one StorageError line names the sources tried.
Endpoint: ``StorageConfig.endpoint_url``, else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, else
AWS. Region: ``StorageConfig.region``, else what boto3 resolves (AWS_DEFAULT_REGION, the
profile), else "us-east-1" only when an endpoint is set (a custom store still needs a
signing region). Addressing: ``storage.addressing`` ("auto": path-style when an endpoint is
set, boto3's default otherwise).

Retries: every request is retried by botocore ("standard" mode: connection errors, 5xx,
throttling) up to ``max_retries`` extra attempts. A broken *response body* is not retried by
botocore; `get_bytes` retries it itself, backoff from ``retry_backoff_s``, doubling.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from pipeline.config import StorageConfig
from pipeline.storage.base import (
    ObjectInfo,
    ObjectNotFound,
    PreconditionFailed,
    StorageError,
    TransientStorageError,
    check_condition,
    check_range,
    split_s3,
)
from pipeline.storage.chain import client_for

T = TypeVar("T")
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "Forbidden"}
_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_PRECONDITION = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}


def endpoint_of(cfg: StorageConfig) -> str:
    """The endpoint URL in use, "" for AWS itself."""
    return (cfg.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3", "")
            or os.environ.get("AWS_ENDPOINT_URL", ""))


class S3Backend:
    """Objects in S3 buckets. Thread-safe; picklable (the client is rebuilt lazily)."""

    def __init__(self, cfg: StorageConfig) -> None:
        self.cfg = cfg
        self._client: Any = None
        self._source = ""  # where the chain found the credentials ("env", "iam-role", ...)
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"cfg": self.cfg}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["cfg"])  # type: ignore[misc]

    @property
    def endpoint(self) -> str:
        """The endpoint in use (for messages); "AWS default" when none is configured."""
        return endpoint_of(self.cfg) or "AWS default"

    @property
    def client(self) -> Any:
        """The boto3 S3 client (built on first use); no credentials -> StorageError."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client, self._source = client_for(self.cfg, endpoint_of(self.cfg))
        return self._client

    @property
    def credential_source(self) -> str:
        """Where boto3's chain found the credentials: "env", "shared-credentials-file",
        "assume-role-with-web-identity", "iam-role", ... (builds the client)."""
        _ = self.client
        return self._source

    # ------------------------------------------------------------------ API

    def check_access(self, uri: str) -> None:
        bucket, _ = split_s3(uri)
        with self._errors(uri, "head_bucket"):
            self.client.head_bucket(Bucket=bucket)

    def put_bytes(self, uri: str, data: bytes, *, if_match: str | None = None,
                  if_none_match: bool = False) -> str:
        check_condition(uri, if_match, if_none_match)
        bucket, key = split_s3(uri)
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key, "Body": data}
        if if_match is not None:
            kwargs["IfMatch"] = if_match
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        with self._errors(uri, "put_object"):
            try:
                return str(self.client.put_object(**kwargs).get("ETag", ""))
            except Exception as exc:
                if (if_match is not None or if_none_match) and (
                        _code(exc) in _PRECONDITION or (if_match and _code(exc) in _NOT_FOUND)):
                    cond = f"if_match={if_match}" if if_match else "if_none_match"
                    raise PreconditionFailed(
                        f"put_object {uri} (endpoint {self.endpoint}): condition {cond} does "
                        f"not hold ({_code(exc)}): the object changed or exists") from exc
                raise

    def put_file(self, uri: str, path: str, metadata: dict[str, str] | None = None, *,
                 if_none_match: bool = False) -> None:
        from boto3.s3.transfer import TransferConfig

        mb = 2**20
        if if_none_match:
            self._put_file_if_none_match(uri, path, dict(metadata or {}))
            return
        tc = TransferConfig(multipart_threshold=self.cfg.multipart_threshold_mb * mb,
                            multipart_chunksize=self.cfg.multipart_chunk_mb * mb,
                            max_concurrency=4)
        bucket, key = split_s3(uri)
        with self._errors(uri, "upload"):
            self.client.upload_file(path, bucket, key, Config=tc,
                                    ExtraArgs={"Metadata": dict(metadata or {})})

    def _put_file_if_none_match(self, uri: str, path: str, metadata: dict[str, str]) -> None:
        """Create `uri` from the file only if no object has that name (``If-None-Match: *``
        on the PutObject, or on the CompleteMultipartUpload above the multipart threshold:
        boto3's transfer manager cannot pass it). A lost condition -> PreconditionFailed."""
        bucket, key = split_s3(uri)
        size = os.path.getsize(path)
        chunk = max(self.cfg.multipart_chunk_mb * 2**20, 5 * 2**20)
        with self._errors(uri, "put_object"):
            try:
                if size <= self.cfg.multipart_threshold_mb * 2**20:
                    with open(path, "rb") as f:
                        self.client.put_object(Bucket=bucket, Key=key, Body=f,
                                               Metadata=metadata, IfNoneMatch="*")
                    return
                upload = self.client.create_multipart_upload(Bucket=bucket, Key=key,
                                                             Metadata=metadata)["UploadId"]
                try:
                    parts = []
                    with open(path, "rb") as f:
                        for number, data in enumerate(iter(lambda: f.read(chunk), b""), 1):
                            etag = self.client.upload_part(Bucket=bucket, Key=key, Body=data,
                                                           UploadId=upload,
                                                           PartNumber=number)["ETag"]
                            parts.append({"ETag": etag, "PartNumber": number})
                    self.client.complete_multipart_upload(
                        Bucket=bucket, Key=key, UploadId=upload, IfNoneMatch="*",
                        MultipartUpload={"Parts": parts})
                except BaseException:
                    with contextlib.suppress(Exception):
                        self.client.abort_multipart_upload(Bucket=bucket, Key=key,
                                                           UploadId=upload)
                    raise
            except Exception as exc:
                if _code(exc) in _PRECONDITION:
                    raise PreconditionFailed(
                        f"put {uri} (endpoint {self.endpoint}): an object of that name "
                        f"already exists (if_none_match, {_code(exc)})") from exc
                raise

    def get_bytes(self, uri: str, start: int = 0, end: int | None = None, *,
                  if_match: str | None = None) -> bytes:
        check_range(uri, start, end)
        if end is not None and end == start:
            return b""
        bucket, key = split_s3(uri)
        rng = f"bytes={start}-" + ("" if end is None else str(end - 1))

        def fetch() -> bytes:
            kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
            if start or end is not None:
                kwargs["Range"] = rng
            if if_match is not None:
                kwargs["IfMatch"] = if_match
            try:
                resp = self.client.get_object(**kwargs)
            except Exception as exc:
                if _code(exc) == "InvalidRange":
                    return b""
                raise
            return resp["Body"].read()

        return self._with_backoff(fetch, uri, "get_object")

    def get_stream(self, uri: str, start: int = 0, *,
                   if_match: str | None = None) -> tuple[Any, int]:
        if start < 0:
            raise ValueError(f"get_stream {uri}: start={start} must be >= 0")
        bucket, key = split_s3(uri)
        cond = {} if if_match is None else {"IfMatch": if_match}
        with self._errors(uri, "get_object"):
            try:
                resp = self.client.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-",
                                              **cond)
            except Exception as exc:
                if _code(exc) != "InvalidRange":
                    raise
                info = self.head(uri)
                if info is None:
                    raise ObjectNotFound(f"get_object {uri}: no such object") from exc
                if if_match is not None and info.etag != if_match:
                    raise PreconditionFailed(f"get_object {uri}: the object changed (ETag "
                                             f"{if_match} -> {info.etag})") from exc
                return io.BytesIO(b""), info.size
        content_range = resp.get("ContentRange") or ""
        if "/" in content_range and not content_range.endswith("/*"):
            total = int(content_range.rsplit("/", 1)[1])
        else:  # a server that ignores Range for bytes=0- answers 200 with the whole object
            total = int(resp["ContentLength"]) + (start if content_range else 0)
        return resp["Body"], total

    def get_range(self, uri: str, start: int, end: int) -> tuple[bytes, int, str]:
        bucket, key = split_s3(uri)
        with self._errors(uri, "get_object"):
            resp = self.client.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}")
            data = resp["Body"].read()
        total = int(str(resp.get("ContentRange") or f"/{len(data)}").rsplit("/", 1)[1])
        return data, total, str(resp.get("ETag", ""))

    def head(self, uri: str) -> ObjectInfo | None:
        bucket, key = split_s3(uri)
        try:
            with self._errors(uri, "head_object"):
                resp = self.client.head_object(Bucket=bucket, Key=key)
        except ObjectNotFound:
            return None
        meta = {str(k).lower(): str(v) for k, v in resp.get("Metadata", {}).items()}
        return ObjectInfo(size=int(resp["ContentLength"]), etag=str(resp.get("ETag", "")),
                          metadata=meta)

    def list(self, prefix_uri: str) -> list[str]:
        return [uri for uri, _ in self.list_info(prefix_uri)]

    def list_info(self, prefix_uri: str) -> list[tuple[str, ObjectInfo]]:
        bucket, prefix = split_s3(prefix_uri)
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        out: list[tuple[str, ObjectInfo]] = []
        with self._errors(prefix_uri, "list_objects_v2"):
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                         Prefix=prefix)
            for page in pages:
                out.extend((f"s3://{bucket}/{o['Key']}",
                            ObjectInfo(size=int(o["Size"]), etag=str(o.get("ETag", "")),
                                       metadata={}))
                           for o in page.get("Contents", []))
        return sorted(out, key=lambda item: item[0])

    def delete(self, uri: str) -> None:
        bucket, key = split_s3(uri)
        with self._errors(uri, "delete_object"):
            self.client.delete_object(Bucket=bucket, Key=key)

    # ------------------------------------------------------------------ errors, retries

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
            bucket = split_s3(uri)[0]
            if code == "NoSuchBucket" or (code in _NOT_FOUND and what == "head_bucket"):
                raise StorageError(f"{what} {where}: bucket {bucket!r} does not exist") from exc
            if code in _NOT_FOUND:
                raise ObjectNotFound(f"{what} {where}: no such object") from exc
            if code in ("PreconditionFailed", "412"):
                raise PreconditionFailed(f"{what} {where}: the object changed: {msg}") from exc
            if code in _DENIED:
                raise StorageError(
                    f"{what} {where}: access to bucket {bucket!r} denied ({code}: {msg}); "
                    f"check the credentials boto3 found (source: {self._source or '?'})"
                ) from exc
            raise StorageError(f"{what} {where}: {code}: {msg}") from exc
        except bx.NoCredentialsError as exc:
            raise StorageError(f"{what} {where}: no AWS credentials found") from exc
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
        """Run `fn`, retrying TransientStorageError up to cfg.max_retries times."""
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


def _code(exc: BaseException) -> str:
    """The S3 error code of a botocore ClientError ("" for anything else)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""
