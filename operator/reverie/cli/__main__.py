"""``python -m reverie.cli``: the ``reverie`` command (the local executor starts phases this way)."""

from reverie.cli import main

main()
