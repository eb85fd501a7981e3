"""One module per ``volcast`` verb: ``add_arguments(parser)`` and ``main(args) -> int``."""
