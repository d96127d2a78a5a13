"""sd_notify: tell systemd (Type=notify) when we are ready and when we are stopping.

The protocol is one datagram on the AF_UNIX socket named by $NOTIFY_SOCKET; a leading `@`
means the abstract namespace. The `sdnotify` package is unmaintained, and this is all of it.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("voltd.systemd")


def notify(message: str) -> bool:
    """Send e.g. "READY=1"; False (and nothing else) when not run under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("sd_notify %s failed: %s", message, exc)
        return False
    return True
