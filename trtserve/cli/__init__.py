"""The ``trtserve`` command line (``trtserve.cli:main``): a thin adapter over the library, one module per command
group (see :mod:`trtserve.cli.parser`). Nothing is imported here, so that ``trtserve health`` starts fast."""


def main(argv: "list[str] | None" = None) -> int:
    """Run the command line; returns the exit status (see :func:`trtserve.cli.parser.main`)."""
    from trtserve.cli.parser import main as run

    return run(argv)
