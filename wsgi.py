"""WSGI entry point for gunicorn / uwsgi / mod_wsgi: configured from DRENGR_* variables (drengr.settings)."""

import sys

from drengr._memory import return_large_blocks
from drengr.cli import SWITCH_INTERVAL_S
from drengr.settings import Config, SettingError
from drengr.web import create_app

sys.setswitchinterval(SWITCH_INTERVAL_S)  # as `drengr serve` does (docs/operating.md, "Settings")
return_large_blocks()  # as `drengr serve` does: freed request bodies go back to the system

try:
    config = Config.from_env()  # every variable wsgi.py takes, checked before anything is created
except SettingError as error:
    raise SystemExit(f"drengr: {error}") from None

application = create_app(config)
