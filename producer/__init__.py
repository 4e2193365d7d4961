"""Feeds the input topic: CSV or synthetic records, malformed ones on request, paced."""
