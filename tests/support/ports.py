"""Free loopback ports for servers started by tests."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it; a tiny race with other processes remains).

    Also the way to get a *closed* port for "server down" tests: nothing listens on it afterwards.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
