"""Running several Mailwright nodes on one PostgreSQL database.

What: the parts of a cluster that are not storage (store/postgres.py holds the shared
queue, leases, LISTEN/NOTIFY and bodies):

* ``node``: this node's identity and the store it opens from settings;
* ``heartbeat``: the per-node loop that records liveness and drops stale body copies;
* ``limits``: per-destination concurrency that holds across every node (leased slots);
* ``status``: what ``mailwright cluster status`` shows.
"""
