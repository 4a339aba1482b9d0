"""The ``pixelmill`` command, one module per subcommand."""
