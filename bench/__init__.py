"""Throughput and latency benchmark: ``python -m bench.throughput`` (``make bench``).

Not a test and not one of the three components: it may import worker, training and producer.
"""
