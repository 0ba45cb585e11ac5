"""`loadtest.server`'s guard against the free-port race: "ready" only counts on a socket our process tree owns."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from loadtest.server import owns_port


def test_owns_port_only_for_the_process_tree_holding_the_listener() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert owns_port(os.getpid(), port)
        # a child that holds nothing: a stranger's listener on the port is not its service
        child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
        try:
            assert not owns_port(child.pid, port)
        finally:
            child.communicate(b"", timeout=30)
    assert not owns_port(os.getpid(), port)  # closed: nobody listens there any more
