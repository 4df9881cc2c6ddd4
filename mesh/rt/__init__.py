"""The one shared I/O layer: event loop, sockets, TLS, relays, xDS client, logging, metrics, drain."""
