"""The ``kvsim`` command line: one entry point, one module per subcommand, imported lazily."""
