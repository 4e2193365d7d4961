"""forestream worker."""
