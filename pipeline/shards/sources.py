"""Input enumeration for `shards write`: a local folder, an ``s3://`` prefix, or Fashion-MNIST.

A `Source` is an ordered list of `InputItem`s (deterministic: sorted paths, or dataset order)
plus a `load(item) -> bytes`. Folder and bucket inputs keep their original bytes;
`validate_image` checks that those bytes decode (non-images, truncated files and
unsupported formats become skip reasons, never fatal). Fashion-MNIST images are encoded
as PNG here.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.storage import Storage, is_s3, split_s3

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")  # THE image member extensions of a sample
_FORMAT_EXT = {"JPEG": ("jpg", "jpeg"), "PNG": ("png",), "WEBP": ("webp",)}
LABEL_MODES = ("auto", "folders", "none")
FMNIST_PREFIX = "fashion-mnist:"
MAX_KEY = 80


class BadInput(ValueError):
    """One input cannot become a sample; the message is the recorded skip reason."""


@dataclass(frozen=True)
class InputItem:
    name: str  # what a skip record calls it: a path, a URI, or "fashion-mnist:train[12]"
    key: str  # sample key: no dots, no slashes, unique within the source
    ext: str  # lower-case extension from the file name ("png" for Fashion-MNIST)
    label: str | None  # class name, None when unlabelled
    ref: str | int  # path / URI / row index, what `load` reads


@dataclass
class Source:
    uri: str
    items: list[InputItem]
    classes: list[str] | None  # class names in label order; None = unlabelled
    skipped: list[dict[str, str]] = field(default_factory=list)  # found while enumerating
    encoded_here: bool = False  # True: bytes come from our own encoder (no validation needed)
    load: Callable[[InputItem], bytes] = lambda item: b""


def sanitize_key(relpath: str) -> str:
    """``"class_00/img 1.jpg" -> "class_00_img_1"``: drop the extension, map every character
    other than letters, digits, '-' and '_' to '_'; shorten long keys with a hash suffix."""
    stem = relpath.rsplit(".", 1)[0] if "." in os.path.basename(relpath) else relpath
    key = re.sub(r"[^A-Za-z0-9_-]", "_", stem.strip("/")) or "_"
    if len(key) > MAX_KEY:  # tar (ustar) member names hold 100 characters
        key = f"{key[:MAX_KEY - 17]}-{hashlib.sha1(key.encode()).hexdigest()[:16]}"
    return key


def validate_image(data: bytes, ext: str) -> str:
    """Decode enough of `data` to trust it; return the tar member extension to store it under.

    JPEGs are decoded in draft mode (1/8 scale: every entropy-coded byte is still parsed, so a
    truncated file fails); PNG and WebP fully. Raises BadInput with the reason otherwise.
    """
    if not data:
        raise BadInput("empty file")
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = str(im.format)
            if fmt not in _FORMAT_EXT:
                raise BadInput(f"image format {fmt} is not supported (jpg, png, webp)")
            if fmt == "JPEG":
                im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
    except BadInput:
        raise
    except UnidentifiedImageError as exc:
        raise BadInput("not an image (unrecognised file format)") from exc
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a skip reason
        raise BadInput(f"not a decodable image ({type(exc).__name__}: {exc})") from exc
    allowed = _FORMAT_EXT[fmt]
    return ext if ext in allowed else allowed[0]


Triple = tuple[str, str, str | None]  # (relative path, extension, class name)


def _assign(relpaths: list[str], labels: str, where: str,
            skipped: list[dict[str, str]]) -> tuple[list[Triple], list[str] | None]:
    """Split sorted relative paths into (relpath, ext, class) and the class list."""
    images: list[tuple[str, str]] = []
    for rel in relpaths:
        base = os.path.basename(rel)
        ext = base.rsplit(".", 1)[-1].lower() if "." in base else ""
        if ext in IMAGE_EXTS:
            images.append((rel, ext))
        else:
            skipped.append({"input": f"{where}/{rel}",
                            "reason": f"unsupported extension {('.' + ext) if ext else '(none)'}"
                                      f" (expected {', '.join('.' + e for e in IMAGE_EXTS)})"})
    subs = sorted({rel.split("/", 1)[0] for rel, _ in images if "/" in rel})
    use_folders = labels == "folders"
    out: list[Triple] = []
    for rel, ext in images:
        if not use_folders:
            out.append((rel, ext, None))
        elif "/" not in rel:
            skipped.append({"input": f"{where}/{rel}",
                            "reason": "not inside a class sub-folder (--labels folders)"})
        else:
            out.append((rel, ext, rel.split("/", 1)[0]))
    return out, (subs if use_folders else None)


def _items(where: str, triples: list[Triple],
           ref: Callable[[str], str]) -> list[InputItem]:
    seen: set[str] = set()
    items = []
    for rel, ext, label in triples:
        base = key = sanitize_key(rel)
        n = 1
        while key in seen:  # e.g. a/b_c.jpg vs a_b/c.jpg, or x.jpg beside x.png
            n += 1
            key = f"{base}-{n}"
        seen.add(key)
        items.append(InputItem(name=f"{where}/{rel}", key=key, ext=ext, label=label,
                               ref=ref(rel)))
    return items


def _folder_source(src: str, labels: str) -> Source:
    if not os.path.isdir(src):
        raise FileNotFoundError(f"source folder {src!r} does not exist")
    root = src.rstrip("/") or "/"
    rels = sorted(os.path.relpath(os.path.join(dirpath, name), root)
                  for dirpath, _, names in os.walk(root) for name in names)
    skipped: list[dict[str, str]] = []
    triples, classes = _assign(rels, labels, root, skipped)
    items = _items(root, triples, lambda rel: os.path.join(root, rel))

    def load(item: InputItem) -> bytes:
        with open(str(item.ref), "rb") as f:
            return f.read()

    return Source(uri=src, items=items, classes=classes, skipped=skipped, load=load)


def _s3_source(src: str, labels: str, storage: Storage) -> Source:
    split_s3(src)
    storage.check_access(src)
    prefix = src.rstrip("/")
    rels = [uri[len(prefix) + 1:] for uri in storage.list(prefix)]
    skipped: list[dict[str, str]] = []
    triples, classes = _assign(rels, labels, prefix, skipped)
    items = _items(prefix, triples, lambda rel: f"{prefix}/{rel}")
    return Source(uri=src, items=items, classes=classes, skipped=skipped,
                  load=lambda item: storage.get_bytes(str(item.ref)))


def _fmnist_source(src: str, labels: str) -> Source:
    from pipeline.shards.fmnist import CLASSES, load_fashion_mnist

    split = src[len(FMNIST_PREFIX):]
    if labels == "folders":
        raise ValueError(f"--labels folders: {src} has built-in labels (use auto or none)")
    x, y = load_fashion_mnist(split)  # x: (N, 28, 28) uint8, y: (N,) int64
    labelled = labels != "none"
    items = [InputItem(name=f"{src}[{i}]", key=f"{split}-{i:06d}", ext="png",
                       label=CLASSES[int(y[i])] if labelled else None, ref=i)
             for i in range(len(x))]

    def load(item: InputItem) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(x[int(item.ref)]), mode="L").save(buf, format="PNG")
        return buf.getvalue()

    return Source(uri=src, items=items, classes=list(CLASSES) if labelled else None,
                  encoded_here=True, load=load)


def open_source(src: str, storage: Storage, labels: str = "auto") -> Source:
    """Enumerate `src` (local folder, ``s3://bucket/prefix``, ``fashion-mnist:train|test``).

    `labels`: "folders" = first-level sub-folder names are the classes (images outside any
    sub-folder are skipped); "none" = unlabelled; "auto" = Fashion-MNIST's built-in labels,
    unlabelled for folders and buckets (sub-folders may be dates or shards, not classes).
    """
    if labels not in LABEL_MODES:
        raise ValueError(f"labels={labels!r}: expected one of {', '.join(LABEL_MODES)}")
    if src.startswith(FMNIST_PREFIX):
        return _fmnist_source(src, labels)
    if is_s3(src):
        return _s3_source(src, labels, storage)
    if "://" in src:
        raise ValueError(f"source {src!r}: expected a folder, s3://bucket/prefix or "
                         f"fashion-mnist:train|test")
    return _folder_source(src, labels)
