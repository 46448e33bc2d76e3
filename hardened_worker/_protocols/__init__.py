"""The wire, below uvicorn's HTTP protocols: what a client may send before the app sees a request.

* :mod:`.limits`: the pure core, bytes in, a :class:`~.limits.Breach` or nothing out; it follows
  each request's framing so the count restarts per request on keep-alive and pipelined connections;
* :mod:`.http`: the thin subclass of uvicorn's ``HttpToolsProtocol``/``H11Protocol`` that feeds it,
  answers 431/414, and keeps one timer per connection for the header and body read timeouts;
* :mod:`.descriptors`: a reserved descriptor, so a worker out of descriptors resets new clients
  at once instead of leaving them in the backlog (libuv's "EMFILE trick").
"""

from hardened_worker._protocols.limits import Breach, HeadCounter, Limits

__all__ = ["Breach", "HeadCounter", "Limits"]
