"""Subcommands of the ``fastipc`` command, one module per group (see ``fastipc.__main__``)."""
