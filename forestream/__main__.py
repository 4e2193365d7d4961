"""``python -m forestream`` is the ``forestream`` command."""

from forestream.cli import main

main()
