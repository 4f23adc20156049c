"""WSGI entry point of a clone (``gunicorn wsgi:application`` from its top): drengr.wsgi's ``application``.

An installed drengr has the same as ``drengr.wsgi:application``, from any directory.
"""

from drengr.wsgi import application

__all__ = ["application"]
