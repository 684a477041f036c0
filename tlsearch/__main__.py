"""``python -m tlsearch`` is the ``tlsearch`` command."""

from tlsearch.cli import main

main()
