"""General networking both proxies share, on asyncio: relays as ``asyncio.Protocol`` pairs with
backpressure (``relay``), socket factories with the mesh's mark (``sockets``), sockets inside a
pod's network namespace with a transparent source (``netns``), timers and keepalive, receive
buffers, and memory tuning. HBONE itself is in :mod:`mesh.rt.hbone`."""
