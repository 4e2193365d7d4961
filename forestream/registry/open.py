"""Opening the registry a setting names: a directory or a URI, each to its backend.

The one module that knows both backends, so that neither backend imports the other.
"""

from __future__ import annotations

import os

from forestream.errors import UserError
from forestream.registry.local import LocalModelStore
from forestream.registry.object_store import ObjectModelStore, check_uri
from forestream.registry.store import URI_RE, ModelStore, is_uri

__all__ = ["is_uri", "open_store", "store_location"]


def store_location(location: str | os.PathLike[str]) -> str:
    """The store setting as given, checked: a local path, or a URI fsspec can open.

    ``file://`` URIs become plain paths (the local store keeps its rename and ``flock``).
    """
    if not isinstance(location, str):
        return os.fspath(location)
    text = location.strip()
    if not text:
        raise UserError("the model store is empty: give a directory or a URI like s3://bucket/p")
    match = URI_RE.match(text)
    if match is None:
        return text
    scheme = match.group(1).lower()
    if scheme == "file":
        path = text[len("file://") :]
        if not path.startswith("/"):
            raise UserError(f"model store {text!r}: a file:// URI needs an absolute path")
        return path
    return check_uri(text)


def open_store(location: str | os.PathLike[str], *, endpoint_url: str | None = None) -> ModelStore:
    """The store for a path or URI: every registry command and the worker open it this way.

    ``endpoint_url`` (``FORESTREAM_S3_ENDPOINT_URL``) points S3 URIs at an S3-compatible store.
    """
    where = store_location(location)
    if is_uri(where):
        return ObjectModelStore(where, endpoint_url=endpoint_url)
    return LocalModelStore(where)
