"""The HTTP side of `vosd serve`: job API, server-sent events, outputs, dashboard, metrics and probes.

Off unless ``http.listen`` is set (streamer.config.HttpConfig). Modules:

* ``app``       FastAPI app, shared context (one JobQueue), JSON error bodies, the request-size guard
* ``auth``      bearer token
* ``routes``    /jobs, /jobs/{id}[/stop|/events|/outputs/...], /sources/first-frame
* ``sources``   what a job may read (roots, schemes), uploads, masks from PNGs or polygons
* ``metrics``   /metrics, /healthz, /readyz, read from Redis at scrape time
* ``dashboard`` / and static/ (index.html, dashboard.js)
* ``server``    uvicorn on a thread of the daemon process

Wiring (streamer/cli/daemon_commands.py serve_command)::

    api = start_api(config)      # None when http.listen is empty; ApiStartError when it cannot listen
    ...run the daemon...
    api.stop()
"""
