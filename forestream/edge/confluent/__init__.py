"""The librdkafka side of the Kafka edge (:mod:`forestream.edge.interface`), one module per role."""

from forestream.edge.confluent.admin import ConfluentAdmin
from forestream.edge.confluent.classify import classify_librdkafka_error
from forestream.edge.confluent.client import RECONNECT_BACKOFF_MAX_MS, consume_available
from forestream.edge.confluent.consumer import ConfluentGroupConsumer
from forestream.edge.confluent.producer import ConfluentProducer, ConfluentTransactionalProducer
from forestream.edge.confluent.reader import ConfluentGroupOffsetsReader, ConfluentReader

__all__ = [
    "RECONNECT_BACKOFF_MAX_MS",
    "ConfluentAdmin",
    "ConfluentGroupConsumer",
    "ConfluentGroupOffsetsReader",
    "ConfluentProducer",
    "ConfluentReader",
    "ConfluentTransactionalProducer",
    "classify_librdkafka_error",
    "consume_available",
]
