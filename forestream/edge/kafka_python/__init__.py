"""The kafka-python side of the Kafka edge (:mod:`forestream.edge.interface`), by client role."""

from forestream.edge.kafka_python.admin import KafkaPythonAdmin
from forestream.edge.kafka_python.classify import classify_client_error
from forestream.edge.kafka_python.client import quicken_metadata
from forestream.edge.kafka_python.consumer import KafkaPythonGroupConsumer
from forestream.edge.kafka_python.producer import (
    KafkaPythonProducer,
    KafkaPythonTransactionalProducer,
)
from forestream.edge.kafka_python.reader import KafkaPythonGroupOffsetsReader, KafkaPythonReader

__all__ = [
    "KafkaPythonAdmin",
    "KafkaPythonGroupConsumer",
    "KafkaPythonGroupOffsetsReader",
    "KafkaPythonProducer",
    "KafkaPythonReader",
    "KafkaPythonTransactionalProducer",
    "classify_client_error",
    "quicken_metadata",
]
