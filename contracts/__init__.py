"""What training, worker and producer share: wire models, topic names, headers, settings.

The three components never import each other; everything they must agree on lives here.
"""
