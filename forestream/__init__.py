"""forestream: streaming RandomForest inference on Apache Kafka, under one import root.

Three components, ``forestream.training``, ``forestream.worker`` and ``forestream.producer``,
never import each other: they meet in the shared rooms (``wire``, ``edge``, ``registry``,
``runtime``, ``errors``), which import no component. The shell (``cli``, ``exit_codes``,
``demo``, ``monitor``) registers the components' commands; ``local`` runs a real broker for the
demo, the tests and the benchmark.
"""
