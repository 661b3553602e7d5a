"""``adaptrix serve``: an OpenAI-compatible HTTP server for one base model and many adapters.

Modules, one job each:

- :mod:`.errors`: OpenAI's error shape and the exception that carries it;
- :mod:`.schemas`: request bodies parsed and validated into frozen records;
- :mod:`.scheduler`: the thread that owns the engine and runs requests;
- :mod:`.metrics`: the Prometheus metrics of one server;
- :mod:`.app`: the Starlette application (routes, auth, body limits);
- ``static/index.html``: the playground page served at ``GET /``.

Nothing here is imported by ``adaptrix --help``; Starlette, uvicorn and
prometheus-client come with the ``serve`` extra (``pip install 'adaptrix[serve]'``).
"""
