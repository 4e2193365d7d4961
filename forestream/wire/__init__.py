"""Wire contracts: what goes over Kafka and into files (messages, headers, schema, partitioning)."""
