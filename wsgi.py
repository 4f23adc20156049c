"""WSGI entry point for gunicorn / uwsgi / mod_wsgi: configured from DRENGR_* variables."""

import sys

from drengr._memory import return_large_blocks
from drengr.cli import SWITCH_INTERVAL_S
from drengr.web import create_app

sys.setswitchinterval(SWITCH_INTERVAL_S)  # as `drengr serve` does: see the README ("GIL switch interval")
return_large_blocks()  # as `drengr serve` does: freed request bodies go back to the system

application = create_app()
