"""gunicorn settings for drengr's wsgi.py (``gunicorn -c deploy/gunicorn.conf.py …``).

With several workers, each counts its own requests: PROMETHEUS_MULTIPROC_DIR
(an empty folder the workers can write, emptied before each start) lets
``GET /metrics`` add them all up, whichever worker answers the scrape. When a
worker exits, its live gauges stop counting (prometheus_client's
``mark_process_dead``); its counters stay in the sums.

The workers' writer (one process they share, ``DRENGR_WRITER=shared``, the
default) starts and builds its dedup window as the first worker starts, as
``drengr serve``'s does, instead of in a worker's first request (which, with
a window of millions of ids, would wait seconds, and the requests behind it
too); the other workers join it as they start. Not on import of ``wsgi.py``:
with ``--preload`` that runs in gunicorn's master, and a writer thread would
not survive the fork into the workers.
"""

from drengr import metrics


def child_exit(server, worker):  # noqa: ARG001 - gunicorn's hook signature
    metrics.process_exited(worker.pid)


def post_worker_init(worker):
    from drengr.web.state import state_of

    state_of(worker.wsgi).store.warm()
