"""`nmt serve`: the HTTP server (app.py, server.py), its dynamic batching (batcher.py), request
checks (protocol.py), metrics (metrics.py) and the page it serves (static/). Nothing is imported
here, so that the rest of nmt works without starlette and uvicorn installed."""
