"""``detbatch serve``: real-time detection over HTTP with Ray Serve, the same model and contract as detect.

The modules read in the order a request passes through them::

    requests  the HTTP request -> options and pixels, or the error that answers it (400/403/404/413/422)
    model     the replica's model: detect's Detector on a batch of requests -> one JSON answer each
    app       the Serve deployment (routes, @serve.batch, replicas) and how it is deployed

:mod:`detbatch.serve.config` holds the typed config. docs/serve.md has the API and the decisions.
"""

from detbatch.serve.config import APP_NAME, ServeConfig

__all__ = ["APP_NAME", "ServeConfig"]
