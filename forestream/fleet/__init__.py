"""The fleet's view, shared by the evaluator and ``monitor``: what every instance published on
the monitoring topic (evaluation counts, shadow counts, workers' window counts), summed."""
