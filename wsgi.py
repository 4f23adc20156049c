"""WSGI entry point for gunicorn / uwsgi / mod_wsgi: configured from DRENGR_* variables."""

from drengr.web import create_app

application = create_app()
