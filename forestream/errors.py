"""Every error forestream raises on purpose, in one tree with one root, classified by cause.

Three causes, because each asks a different thing of the code that meets it:

- :class:`UserError` ends the command in one line with no traceback: a flag, file, setting or
  cluster configuration that cannot work, or an artifact that must not be served. Retrying
  would only repeat it. Its subclasses :class:`KafkaFatalError` name the Kafka causes
  (credentials, TLS, ACL, topic, codec, fencing) that orchestrators tell apart by exit code.
- :class:`TransientError` goes away by itself (a broker restarting, a rebalance, an aborted
  transaction): the caller retries with backoff or re-reads, and the process keeps running.
- Anything else (:class:`ForestreamError` directly) is an outcome a caller handles in place,
  such as a model that cannot score a frame.

Which exit code a class ends a command with is not decided here: the CLI layer owns that table
(:mod:`forestream.exit_codes`), so a worker, the registry and the edge only say *what*
happened.
"""

from __future__ import annotations


class ForestreamError(Exception):
    """The root: ``except ForestreamError`` separates what we raise on purpose from bugs."""

    kind = "error"
    """A stable name for logs, metrics and ``/healthz``; never the message text."""


class UserError(ForestreamError):
    """A mistake in input or environment, or a cause no retry fixes: one line, no traceback."""

    kind = "user_error"


class TransientError(ForestreamError):
    """A cause that passes by itself: retry with backoff, or read again; never ends a process."""

    kind = "transient"


class UnsupportedLibrary(UserError):
    """An installed kafka-python or scikit-learn lacks a private attribute forestream relies on
    (see ``forestream.runtime.internals``): a version outside the pyproject bounds."""

    kind = "unsupported_library"


# -- the environment at start ---------------------------------------------------------------------


class ClusterUnreachable(UserError):
    """No broker answered while a client was built. At start that is the user's to fix (the
    address, the local broker); in a process already running it is an outage, which
    :func:`forestream.edge.factory.rebuilt` turns into a :class:`TransientKafkaError`."""

    kind = "cluster_unreachable"

    def __init__(self, bootstrap: str, message: str) -> None:
        super().__init__(message)
        self.bootstrap = bootstrap


# -- Kafka: transient outcomes --------------------------------------------------------------------


class TransientKafkaError(TransientError):
    """The cluster is away or busy (broker down, leader moving, a timeout): retry with backoff."""

    kind = "kafka_transient"


class BrokersLost(TransientKafkaError):
    """A librdkafka client heard from no broker for longer than its bound: it may have lost
    every broker for good (librdkafka#5301), so the caller builds a new one."""

    kind = "kafka_brokers_lost"

    def __init__(self, silent_s: float, bound_s: float) -> None:
        super().__init__(
            f"no broker heard from for {silent_s:.1f}s (bound {bound_s:g}s): a new client is due"
        )
        self.silent_s = silent_s
        self.bound_s = bound_s


class CommitRejected(TransientError):
    """The group rebalanced without us: those offsets are the new owner's to commit (it
    re-reads from the last committed ones: duplicates, never a gap)."""

    kind = "commit_rejected"


class TransactionAborted(TransientError):
    """The transaction was aborted: none of its records or offsets count (``read_committed``
    readers never see them), so the batch is read again from its first offsets."""

    kind = "transaction_aborted"


class CreationRefused(ForestreamError):
    """The broker refused to create a topic for a reason no retry changes (a partition count or
    replication factor it cannot meet, a config it rejects, a creation policy); ``str()`` says
    the broker's reason, for a one-line user error."""

    kind = "creation_refused"


# -- Kafka: fatal causes (each its own exit code, in the CLI's table) ----------------------------


class KafkaFatalError(UserError):
    """A Kafka error no retry can fix: reported in one line, ends the command."""

    kind = "kafka_fatal"


class AuthenticationFailed(KafkaFatalError):
    kind = "authentication_failed"


class TlsFailed(KafkaFatalError):
    kind = "tls_failed"


class NotAuthorized(KafkaFatalError):
    kind = "not_authorized"


class TopicUnavailable(KafkaFatalError):
    kind = "topic_unavailable"


class UnreadableRecords(KafkaFatalError):
    kind = "unreadable_records"


class ProducerFenced(KafkaFatalError):
    kind = "producer_fenced"


class TopicsNotCoPartitioned(UserError):
    """The evaluator's two topics differ in partition count: a key's prediction and label
    would land on different partitions, and a partition-local join could never meet them."""

    kind = "not_co_partitioned"


# -- the model registry ---------------------------------------------------------------------------


class ArtifactRejected(UserError):
    """An artifact that must not be served: missing, altered, unsigned, or not a model."""

    kind = "artifact_rejected"


class UnsignedArtifact(ArtifactRejected):
    """No signature a loader can accept (none, the retired HMAC scheme, or no key to check it)
    and no ``--allow-unsigned``: its own class, so the reload-failure metric names it."""

    kind = "unsigned"


class BadSignature(ArtifactRejected):
    """A signature that does not verify: another key signed it, or a byte changed since."""

    kind = "bad_signature"


class VersionMismatch(ArtifactRejected):
    """Pickled by another scikit-learn major.minor than this process runs."""

    kind = "version_mismatch"


class StoreUnavailable(UserError):
    """The store could not be reached or refused the request (network, credentials, bucket).

    Its own class so a worker's reload-failure metric tells "store away" from "bad artifact".
    """

    kind = "store_unavailable"


class RegistryConflict(UserError):
    """Another registry command changed what is served between our read and our announcement."""

    kind = "registry_conflict"


class SchemaRegistryUnavailable(TransientError):
    """The Schema Registry did not answer (down, timing out, a 5xx, refused credentials): a
    schema id it never gave us is asked for again; the ids already fetched keep decoding."""

    kind = "schema_registry_unavailable"


class SchemaRegistryRefused(UserError):
    """The Schema Registry refused a request: an incompatible schema, credentials, a bad
    subject. One line, with the registry's own message."""

    kind = "schema_registry_refused"


# -- models and scoring ---------------------------------------------------------------------------


class SchemaIncompatible(ForestreamError, ValueError):
    """The new version's input contract would reject records the serving version accepts."""

    kind = "schema_incompatible"


class ScoringError(ForestreamError):
    """The model could not score a frame (a batch, or a part of one while isolating failures)."""

    kind = "scoring_failed"


# -- the producer ---------------------------------------------------------------------------------


class DeliveryFailed(UserError):
    """Some records were not acknowledged: the run did not do what it said (exit code 1)."""

    kind = "delivery_failed"
