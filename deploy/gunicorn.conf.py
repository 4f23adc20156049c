"""gunicorn settings for drengr's wsgi.py (``gunicorn -c deploy/gunicorn.conf.py …``).

With several workers, each counts its own requests: PROMETHEUS_MULTIPROC_DIR
(an empty folder the workers can write, emptied before each start) lets
``GET /metrics`` add them all up, whichever worker answers the scrape. When a
worker exits, its live gauges stop counting (prometheus_client's
``mark_process_dead``); its counters stay in the sums.
"""

from drengr import metrics


def child_exit(server, worker):  # noqa: ARG001 - gunicorn's hook signature
    metrics.process_exited(worker.pid)
