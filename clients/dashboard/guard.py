"""What the dashboard's Bokeh server lets in: allowed Host names, a bounded number of sessions.

* DNS rebinding: a page served under a foreign name that resolves to 127.0.0.1 must not be live.
  :func:`install` puts a routing rule before Bokeh's handlers that answers 403 to every request
  (HTTP and the websocket's upgrade alike) whose ``Host`` header is not one of the allowed
  ``name:port`` pairs, and gives Bokeh's websocket Origin check the same pairs (with the page's
  real port, also for ``--port 0``).
* Sessions: a page load opens a Bokeh session (a document with its figures).  Bokeh drops a
  session nobody is connected to after ``--session-idle`` seconds; beyond ``--max-sessions``
  open sessions a page load is answered 503 (try again later) instead of growing memory.
"""

from functools import cache


def host_port_pairs(names, port):
    """``name:port`` (lower case; IPv6 addresses in brackets) for names without a port."""
    out = set()
    for name in names:
        name = name.strip().lower()
        if not name:
            continue
        if name.startswith("[") or name.count(":") == 1:  # already with a port
            out.add(name)
        elif ":" in name:  # a bare IPv6 address
            out.add(f"[{name}]:{port}")
        else:
            out.add(f"{name}:{port}")
    return out


@cache
def _tornado_parts():
    """The guard's tornado matchers and handlers, defined on first use: tornado comes with
    Bokeh, an optional package that only the serving dashboard imports."""
    from tornado.routing import Matcher, Rule
    from tornado.web import RequestHandler

    class HostNotAllowed(Matcher):
        def __init__(self, allowed):
            self.allowed = allowed

        def match(self, request):
            host = (request.headers.get("Host") or "").strip().lower()
            return None if host in self.allowed else {}

    class TooManySessions(Matcher):
        def __init__(self, server, path, limit):
            self.server, self.path, self.limit = server, path, limit

        def match(self, request):
            if request.path != self.path:
                return None
            return {} if len(self.server.get_sessions(self.path)) >= self.limit else None

    class Forbidden(RequestHandler):
        def prepare(self):
            self.set_status(403)
            self.finish("host name not allowed (see saxsleash dashboard --allow-origin)\n")

    class Busy(RequestHandler):
        def prepare(self):
            self.set_status(503)
            self.set_header("Retry-After", "10")
            self.finish("too many open dashboard pages; close one or try again in a few seconds\n")

    return Rule, HostNotAllowed, TooManySessions, Forbidden, Busy


def install(server, allowed, max_sessions, path="/"):
    """Host check and session limit on a started-or-not Bokeh ``server`` (see module doc)."""
    app = server._tornado  # the tornado Application of the Bokeh server
    origins = app.websocket_origins  # the set Bokeh checks the websocket's Origin against
    origins.clear()
    origins.update(allowed)
    rule, host_not_allowed, too_many_sessions, forbidden, busy = _tornado_parts()
    rules = app.default_router.rules
    rules.insert(0, rule(too_many_sessions(server, path, max_sessions), busy))
    rules.insert(0, rule(host_not_allowed(frozenset(allowed)), forbidden))
