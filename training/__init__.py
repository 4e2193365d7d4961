"""forestream training."""
