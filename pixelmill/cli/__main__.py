"""``python -m pixelmill.cli``: the same as the ``pixelmill`` command."""

from pixelmill.cli.main import main

main()
