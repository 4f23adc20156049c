"""The installed WSGI entry point: ``gunicorn drengr.wsgi:application`` from any directory.

For gunicorn, uwsgi or mod_wsgi, configured from the ``DRENGR_*`` variables
(``drengr.settings``), as ``drengr serve`` is from its options. The app is
built when a WSGI server imports this module, and only then: nothing else in
drengr imports it. The top-level ``wsgi.py`` of a clone re-exports it.
"""

import atexit
import logging
import sys

from ._memory import return_large_blocks
from .logs import configure as configure_logs
from .settings import SWITCH_INTERVAL_S, Config, SettingError
from .store import StoreError
from .web import create_app
from .web.state import state_of

# As `drengr serve` does: docs/operating.md "The writer: process, thread or shared".
sys.setswitchinterval(SWITCH_INTERVAL_S)
return_large_blocks()  # as `drengr serve` does: freed request bodies go back to the system

try:
    # Every variable is checked before anything is created; a bad one or a store that cannot be
    # opened stops the worker with one sentence, not a traceback.
    _config = Config.from_env()
    # drengr's own lines (the access lines, problems) on stderr, as `drengr serve` prints them,
    # unless the WSGI server set up logging itself (gunicorn's logconfig_dict): then it decides.
    if not logging.getLogger().handlers:
        configure_logs(_config.log_level, _config.log_format)
    application = create_app(_config)
except (SettingError, StoreError) as error:
    raise SystemExit(f"drengr: {error}") from None


@atexit.register
def _close() -> None:
    """A worker that exits (gunicorn's graceful stop) closes what ``drengr serve`` closes: its last
    drop counts, then its store (its writer's dedup window's file: docs/operating.md)."""
    state = state_of(application)
    try:
        state.drops.close()
        state.store.close()
    except Exception as error:  # noqa: BLE001 - the worker exits anyway: one line, not a traceback
        logging.getLogger("drengr").warning("could not close the store as the worker exits: %s", error)
