"""Framework-free deployment helpers: test certificates and node keys, child processes on loopback.

Nothing here imports Flower, `client/`, `server/` or `simulations/`; the
commands that start Flower's SuperLink and SuperNodes live in `server.deploy`
and `client.deploy` and use these.
"""
