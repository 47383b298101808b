"""Free ports on 127.0.0.1, for servers the tests start."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port free now on 127.0.0.1, for a server that cannot bind port 0 itself."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
