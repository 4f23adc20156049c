"""`python -m drengr` is the `drengr` command."""

import sys

from .cli import main

if __name__ == "__main__":  # not when the writer process (spawn) imports this module again
    sys.exit(main())
