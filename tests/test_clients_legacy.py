"""Live: Segment's legacy libraries, still in many projects, against a real `drengr serve`.

``analytics-node`` 6.2.0 (npm; tests/clients/node) and ``analytics-python``
1.4.post1 (PyPI, module ``analytics``), each set up as its README says (the
key, and ``host`` pointed at drengr), make the same calls as the snippets of
docs/sdks.md; every call must land once, mapped per docs/mapping.md.

analytics-python 1.4 pins ``backoff==1.10.0`` while rudder-sdk-python 2.x
needs ``backoff>=2.2.1``: pip cannot install both as requirements, so .ci/run
installs it with ``--no-deps`` (it runs on backoff 2; its other dependencies,
requests, python-dateutil and monotonic, are present or added there).
"""

import importlib.util

import pytest

from drengr import clock
from tests.clients.harness import (
    NODE_DIR,
    assert_canonical_rows,
    live_server,
    require,
    require_node,
    run_node,
    run_python,
)

pytestmark = pytest.mark.clients

ANALYTICS_NODE = """
const Analytics = require('analytics-node')

const analytics = new Analytics('KEY', { host: 'HOST', flushAt: 20, flushInterval: 60000 })

analytics.identify({ userId: 'user_123', traits: { email: 'ada@example.com', plan: 'pro', logins: 5 } })
analytics.track({ userId: 'user_123', event: 'Article Read', properties: { section: 'news', words: 1200 } })
analytics.track({
  userId: 'user_123', event: 'Order Completed',
  properties: { order_id: 'o_1', revenue: '9.99', price: '9.99', quantity: 2, currency: 'USD' },
})
analytics.page({ userId: 'user_123', name: 'Pricing', properties: { plan: 'pro' } })
analytics.screen({ userId: 'user_123', name: 'Home', properties: { tab: 'feed' } })
analytics.group({ userId: 'user_123', groupId: 'acme_inc', traits: { plan: 'enterprise', seats: 20 } })
analytics.alias({ userId: 'user_123', previousId: 'anon_42' })
analytics.flush((error) => { if (error) { console.error(error); process.exit(1) } })
"""

ANALYTICS_PYTHON = """
import analytics

analytics.write_key = "KEY"
analytics.host = "HOST"

analytics.identify("user_123", {"email": "ada@example.com", "plan": "pro", "logins": 5})
analytics.track("user_123", "Article Read", {"section": "news", "words": 1200})
analytics.track("user_123", "Order Completed", {
    "order_id": "o_1", "revenue": "9.99", "price": "9.99", "quantity": 2, "currency": "USD",
})
analytics.page("user_123", name="Pricing", properties={"plan": "pro"})
analytics.screen("user_123", name="Home", properties={"tab": "feed"})
analytics.group("user_123", "acme_inc", {"plan": "enterprise", "seats": 20})
analytics.alias("anon_42", "user_123")
analytics.flush()
"""


def test_analytics_node_6_lands_every_call_once(tmp_path):
    require_node()
    require((NODE_DIR / "node_modules" / "analytics-node").is_dir(), "run `npm ci` in tests/clients/node")
    with live_server(tmp_path) as server:
        key = server.create_key("acme")
        started = clock.now()
        run_node(ANALYTICS_NODE.replace("KEY", key).replace("HOST", server.url))
        server.wait_quiet(0.3)
        assert_canonical_rows(server, "acme", started)
        # analytics-node sends its first message at once, the rest when flushed: all as batches.
        assert {e["path"] for e in server.requests()} == {"/v1/batch"}
        assert sum(e["items"] for e in server.requests()) == 7


def test_analytics_python_1_lands_every_call_once(tmp_path):
    require(
        importlib.util.find_spec("analytics") is not None,
        "pip install --no-deps analytics-python==1.4.post1 monotonic==1.6 (legacy Segment Python)",
    )
    with live_server(tmp_path) as server:
        key = server.create_key("acme")
        started = clock.now()
        run_python(ANALYTICS_PYTHON.replace("KEY", key).replace("HOST", server.url))
        server.wait_quiet(0.3)
        assert_canonical_rows(server, "acme", started)
        assert {e["path"] for e in server.requests()} == {"/v1/batch"}
