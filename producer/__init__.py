"""forestream producer."""
