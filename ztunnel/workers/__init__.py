"""``ztunnel --workers N``: worker processes that share each pod's listeners (``SO_REUSEPORT``).

The ztunnel process (the parent) keeps the one xDS stream, the CA client and its certificate cache,
the node agent's ZDS connection and the admin, metrics and readiness ports; it hands the config,
the pods (with their netns fds) and the certificates to the workers over a socketpair each
(:mod:`~ztunnel.workers.channel`). The workers run the data path only (:mod:`~ztunnel.workers.process`);
the parent starts, restarts and drains them (:mod:`~ztunnel.workers.pool`).
"""
