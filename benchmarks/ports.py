"""A free TCP port on 127.0.0.1, for the servers the benchmarks and tests start (never a fixed one:
a UI or a model server may already be listening on this machine)."""

import socket


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
