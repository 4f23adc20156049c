"""WSGI entry point for gunicorn / uwsgi / mod_wsgi: configured from DRENGR_* variables (drengr.settings)."""

import sys

from drengr._memory import return_large_blocks
from drengr.cli import SWITCH_INTERVAL_S
from drengr.settings import Config, SettingError
from drengr.store import StoreError
from drengr.web import create_app

# As `drengr serve` does: docs/operating.md "The writer: process or thread".
sys.setswitchinterval(SWITCH_INTERVAL_S)
return_large_blocks()  # as `drengr serve` does: freed request bodies go back to the system

try:
    # Every variable wsgi.py takes, checked before anything is created; a bad one or a store that
    # cannot be opened stops the worker with one sentence, not a traceback.
    application = create_app(Config.from_env())
except (SettingError, StoreError) as error:
    raise SystemExit(f"drengr: {error}") from None
