"""The command line: ``main(argv) -> int`` maps every outcome to an exit code (see DESIGN section 2)."""

from edgekit.cli.main import main

__all__ = ["main"]
