"""`python -m drengr` is the `drengr` command."""

import sys

from .cli import main

if __name__ == "__main__":  # only when run as a program, never on import
    sys.exit(main())
