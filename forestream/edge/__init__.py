"""The Kafka edge: one interface to a Kafka client, its settings, errors, preflight and adapters."""
