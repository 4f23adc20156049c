"""Live: Segment's snippet with ``analytics._cdn`` on `drengr serve --analytics-js DIR`, in Chromium.

A page on another origin carries the snippet; the snippet loads
``{_cdn}/analytics.js/v1/{key}/analytics.min.js`` from drengr (DIR is the
suite's own ``@segment/analytics-next`` ``dist/umd``), the library fetches
its settings from ``{_cdn}/v1/projects/{key}/settings`` and its lazy
``auto-track`` chunk from ``{_cdn}/analytics-next/bundles/…`` (what
``trackLink`` and ``trackForm`` need), then sends every call to drengr.

The snippet here is a readable stand-in for Segment's minified one (version
5.2.1): the same ``window.analytics`` stub and method list, the same buffered
calls, the same script URL built from ``analytics._cdn``.
"""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drengr import clock
from tests.clients.harness import (
    ANALYTICS_NEXT_UMD,
    CHROMIUM,
    Browser,
    PageServer,
    live_server,
    require,
    require_node,
    utc_ms,
)

pytestmark = [pytest.mark.clients, pytest.mark.usefixtures("chromium")]

SNIPPET = """
!function () {
  var analytics = window.analytics = window.analytics || [];
  if (analytics.initialize || analytics.invoked) return;
  analytics.invoked = true;
  analytics.methods = ["trackSubmit", "trackClick", "trackLink", "trackForm", "pageview", "identify", "reset",
    "group", "track", "ready", "alias", "debug", "page", "screen", "once", "off", "on", "addSourceMiddleware",
    "addIntegrationMiddleware", "setAnonymousId", "addDestinationMiddleware", "register"];
  analytics.factory = function (method) {
    return function () {
      var args = Array.prototype.slice.call(arguments);
      args.unshift(method);
      analytics.push(args);
      return analytics;
    };
  };
  for (var i = 0; i < analytics.methods.length; i++) {
    analytics[analytics.methods[i]] = analytics.factory(analytics.methods[i]);
  }
  analytics.load = function (key, options) {
    var script = document.createElement("script");
    script.type = "text/javascript";
    script.async = true;
    script.setAttribute("data-global-segment-analytics-key", "analytics");
    script.src = (analytics._cdn || "https://cdn.segment.com") + "/analytics.js/v1/" + key + "/analytics.min.js";
    var first = document.getElementsByTagName("script")[0];
    first.parentNode.insertBefore(script, first);
    analytics._loadOptions = options;
  };
  analytics._writeKey = "KEY";
  analytics._cdn = "CDN";
  analytics.SNIPPET_VERSION = "5.2.1";
  analytics.load("KEY");
  analytics.identify("user_123", { email: "ada@example.com", plan: "pro", logins: 5 });
  analytics.track("Article Read", { section: "news", words: 1200 });
  analytics.page("Pricing", { plan: "pro" });
}();
"""
BODY = """
<a id="buy" href="#thanks">Buy</a>
<form id="signup" action="/thanks" method="get"><input name="seats" value="3"><button id="send">Send</button></form>
<script>
  analytics.trackLink(document.getElementById("buy"), "Buy Clicked", { plan: "pro" })
  analytics.trackForm(document.getElementById("signup"), "Signed Up", { plan: "pro" })
</script>
"""
PAGE_DIMS = {"path", "referrer", "search", "title", "url"}  # analytics-next adds these to a page call
EXPECTED = {
    # event_name -> (event_type, dims (beyond PAGE_DIMS for the page), measures)
    "identify": ("identify", {"plan": "pro"}, {"logins": 5}),
    "article_read": ("track", {"_source_event_name": "Article Read", "section": "news"}, {"words": 1200}),
    "page_viewed": ("page", {"name": "Pricing", "plan": "pro"}, {}),
    "buy_clicked": ("track", {"_source_event_name": "Buy Clicked", "plan": "pro"}, {}),
    "signed_up": ("track", {"_source_event_name": "Signed Up", "plan": "pro"}, {}),
}


@pytest.fixture
def chromium() -> None:
    require_node()
    require(Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    require((ANALYTICS_NEXT_UMD / "standalone.js").is_file(), "run `npm ci` in tests/clients/node")


@pytest.fixture
def opened() -> Iterator[list[Any]]:
    things: list[Any] = []
    yield things
    for thing in things:
        (thing.kill if isinstance(thing, Browser) else thing.close)()


def test_snippet_with_cdn_on_drengr_lands_every_call_with_track_link_and_form(tmp_path, opened):
    with live_server(tmp_path, {"DRENGR_ANALYTICS_JS": str(ANALYTICS_NEXT_UMD)}) as server:
        key = server.create_key("acme")
        snippet = SNIPPET.replace("KEY", key).replace("CDN", server.url)
        html = (
            f"<!doctype html>\n<html>\n<head>\n<title>Pricing</title>\n<script>{snippet}</script>\n</head>\n"
            f"<body>{BODY}</body>\n</html>\n"
        )
        site = PageServer({"/": html, "/thanks": "<!doctype html><title>Thanks</title><p>Thanks</p>"})
        opened.append(site)
        started = clock.now()
        browser = Browser(site.url + "/")
        opened.append(browser)
        bundle = "/analytics-next/bundles/auto-track"
        server.wait_for(
            lambda log: any(e["path"].startswith(bundle) for e in log), 30, "the auto-track chunk"
        )
        server.wait_for(lambda log: sum(e["stored"] for e in log) >= 3, 30, "the three buffered calls")
        browser.eval("document.getElementById('buy').click()")
        server.wait_for(lambda log: sum(e["stored"] for e in log) >= 4, 30, "the link's track")
        browser.eval("document.getElementById('send').click()")  # trackForm tracks, then submits
        server.wait_for(lambda log: sum(e["stored"] for e in log) >= 5, 30, "the form's track")
        browser.close()
        server.wait_quiet(0.5)

        # The library, its settings and its chunk came from drengr, each answered 200.
        gets = [(e["path"], e["status"]) for e in server.requests("GET") if e["path"] != "/health"]
        assert ("/analytics.js/v1/{writeKey}/analytics.min.js", 200) in gets
        assert ("/v1/projects/{writeKey}/settings", 200) in gets
        assert [status for path, status in gets if path.startswith(bundle)] == [200]
        assert all(status == 200 for _path, status in gets), gets
        posts = server.requests()
        assert posts and all(e["status"] == 200 for e in posts) and sum(e["duplicates"] for e in posts) == 0

        rows = server.rows()
        assert sorted(row["event_name"] for row in rows) == sorted(EXPECTED), rows
        finished = clock.now()
        for row in rows:
            event_type, dims, measures = EXPECTED[row["event_name"]]
            assert (row["event_type"], row["tenant_id"], row["external_id"]) == (
                event_type,
                "acme",
                "user_123",
            )
            assert row["measures"] == measures, row
            allowed = set(dims) | (PAGE_DIMS if event_type == "page" else set())
            assert row["dims"].items() >= dims.items() and set(row["dims"]) <= allowed, row
            assert row["event_id"].startswith("ajs-next-")
            assert "ada@example.com" not in json.dumps(row)
            assert utc_ms(started - 2) <= row["received_at"] <= utc_ms(finished + 1)
        assert not [line for line in server.lines if key in line]  # the key sat in three paths
        errors = [line for line in browser.console if line.startswith(("error", "pageerror"))]
        assert not errors, browser.console
