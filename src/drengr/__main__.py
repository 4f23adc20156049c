"""`python -m drengr` is the `drengr` command."""

import sys

from .cli import main

sys.exit(main())
