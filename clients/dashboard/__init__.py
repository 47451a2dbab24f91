"""``saxsleash dashboard``: a live page in the browser for a saxsdogserver.

The dashboard process polls the server over the signed ZeroMQ protocol (:mod:`.watch`) and
serves a Bokeh page (:mod:`.page`, text panels in :mod:`.panels`); the browser talks only to the
dashboard, so the secret never leaves this process.  Command line: :mod:`.cli`.
"""
