"""``forestream evaluate``: the fleet's evaluator, joining labels to predictions by key."""
