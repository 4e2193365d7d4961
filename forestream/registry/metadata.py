"""What a model version is, and the checks its artifact passes: no storage here.

Both stores (:mod:`forestream.registry.local`, :mod:`forestream.registry.object_store`) and a
worker's cache (:mod:`forestream.registry.cache`) share these, so a version means the same and an
artifact is judged the same wherever its bytes come from.

joblib is pickle: :func:`check_artifact` compares the bytes with their recorded sha256 and has
their signature checked (:mod:`forestream.registry.signing`) *before* anything unpickles them,
and
:func:`pickled_class` tells a model from another pickled object without unpickling (the registry
commands must not pay for importing scikit-learn).
"""

from __future__ import annotations

import hashlib
import io
import re
import zlib
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, ValidationError

from forestream.errors import ArtifactRejected, UserError
from forestream.wire.schema import FeatureSchema, ReferenceStats

if TYPE_CHECKING:
    from forestream.registry.signing import Trust

ARTIFACT = "model.joblib"
METADATA = "metadata.json"
QUALITY_REPORT = "quality_report.json"

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
"""A model name: one path component (a directory or key prefix in every store)."""
VERSION_RE = re.compile(r"^v?([0-9]{1,9})$")
"""What a user may type for a version (``v3`` or ``3``)."""
VERSION_KEY_RE = re.compile(r"v[0-9]+")
"""A version as stores name it (a directory or key prefix)."""


class ModelMetadata(BaseModel):
    """Everything known about one trained version; written as ``metadata.json``.

    ``version``, ``artifact_sha256`` and the signature fields are filled in by
    ``ModelStore.save``. ``signature_scheme`` None with a ``signature`` is the retired HMAC.
    """

    model_config = ConfigDict(protected_namespaces=())

    name: str
    version: str = ""
    created_at: str
    target: str
    classes: list[str]
    feature_schema: FeatureSchema
    reference: ReferenceStats
    metrics: dict[str, Any]
    data_sha256: str
    data_rows: int
    sklearn_version: str
    artifact_sha256: str = ""
    signature: str | None = None
    signature_scheme: str | None = None
    signing_key_id: str | None = None
    params: dict[str, Any] = {}
    holdout_prediction_shares: dict[str, float] | None = None
    """Share of each class among the version's predictions on its training holdout: what fleet
    prediction drift compares with (None for versions trained before it was recorded).
    Informative like ``reference`` and ``metrics``: not covered by the signature."""


def normalize_version(version: str) -> str:
    """Accept ``v3`` or ``3``; anything else is a user mistake (and never a path component)."""
    match = VERSION_RE.match(str(version).strip())
    if not match:
        raise UserError(f"invalid model version {version!r}: expected v<number>, e.g. v3")
    return f"v{int(match.group(1))}"


def version_number(version: str) -> int:
    """The number of a normalized version (``v12`` is 12): versions sort by it, not as text."""
    return int(version[1:])


def check_name(name: str) -> str:
    """A model name is a single path component; anything else is a user mistake."""
    if not NAME_RE.match(name):
        raise UserError(
            f"invalid model name {name!r}: use letters, digits, '.', '_' or '-' (max 100)"
        )
    return name


def first_error(exc: ValidationError) -> str:
    """``field.sub: message`` of pydantic's first complaint, and how many more there are."""
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    text = f"{where}: {first['msg']}" if where else str(first["msg"])
    more = exc.error_count() - 1
    return text + (f" (and {more} more error{'s' if more > 1 else ''})" if more else "")


def dump_artifact(pipeline: Any) -> bytes:
    """The artifact's bytes, exactly what gets hashed, signed and stored."""
    import joblib

    buffer = io.BytesIO()
    joblib.dump(pipeline, buffer, compress=3)
    return buffer.getvalue()


def check_artifact(
    data: bytes,
    meta: ModelMetadata,
    where: str,
    expected_sha256: str | None,
    trust: Trust,
) -> None:
    """The hash and signature checks every artifact passes before unpickling, wherever its
    bytes came from (the store or a worker's cache); raises ``ArtifactRejected`` or a subclass
    naming the reason."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != meta.artifact_sha256:
        raise ArtifactRejected(
            f"{where}: sha256 mismatch (recorded {meta.artifact_sha256[:12]}, "
            f"file {actual[:12]}): the artifact was altered; refusing to load it"
        )
    if expected_sha256 is not None and actual != expected_sha256:
        raise ArtifactRejected(
            f"{where}: sha256 {actual[:12]} differs from the announced {expected_sha256[:12]}"
        )
    trust.check(data, meta, where)


def pickled_class(data: bytes) -> str | None:
    """``module.Class`` of the object a joblib artifact pickles, read without unpickling.

    Only the first few opcodes of the (zlib, gzip or uncompressed) pickle stream are parsed:
    enough to tell an estimator from, say, a pickled dict, at no import cost. None when the
    stream does not start with a class reference; other joblib codecs are not judged here
    (``""``): unpickling on the workers still decides.
    """
    import pickletools

    head = data[:65536]
    if head[:1] == b"\x80":
        raw = head
    elif head[:1] == b"\x78" or head[:2] == b"\x1f\x8b":
        wbits = zlib.MAX_WBITS | (16 if head[:1] == b"\x1f" else 0)
        try:
            raw = zlib.decompressobj(wbits).decompress(head, 65536)
        except zlib.error:
            return None
    else:
        return ""
    strings: list[str] = []
    try:
        for opcode, arg, _pos in pickletools.genops(io.BytesIO(raw)):
            if opcode.name in ("PROTO", "FRAME", "MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
                continue
            if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
                strings.append(str(arg))
                continue
            if opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                return f"{strings[-2]}.{strings[-1]}"
            if opcode.name == "GLOBAL":
                return str(arg).replace(" ", ".")
            return None
    except (ValueError, EOFError):  # truncated prefix or not a pickle at all
        return None
    return None
