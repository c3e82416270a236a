"""When the kernel received the bytes of a TCP read: Linux's SO_TIMESTAMPNS, on the monotonic clock.

With SO_TIMESTAMPNS set on a socket, `recvmsg` returns with its data an SCM_TIMESTAMPNS control
message: the time at which the kernel received the last segment of the bytes read, however late
the process then read them. On loopback that is within the sender's own `send`. The kernel
stamps on the real-time clock; `receive` turns it into `time.monotonic()` (the clock of
`ChunkStream.last_read_at` and of the ruler's `x_sent_at`) by the packet's age.
"""

from __future__ import annotations

import socket
import struct
import sys
import time
from collections.abc import Sequence

# Python does not name it; 35 on every Linux architecture but parisc and sparc, whose sockets
# then refuse or ignore it, and `arrival` finds no stamp (the caller falls back).
SO_TIMESTAMPNS: int = getattr(socket, "SO_TIMESTAMPNS", 35)
# A `struct timespec` (two C longs).
_TIMESPEC = struct.Struct("@ll")
ANCILLARY_SPACE = socket.CMSG_SPACE(_TIMESPEC.size) if hasattr(socket, "CMSG_SPACE") else 0
# As much as asyncio's own transports read at once.
MAX_READ = 256 * 1024

Ancillary = Sequence[tuple[int, int, bytes]]


class StampsOn:
    """Holds the kernel's receive time stamps on for as long as it is open.

    The kernel stamps arriving packets only while some socket asks it to, and it switches the
    stamps on a moment after the first one asks (from a work queue): the bytes of a connection
    that asked first may arrive unstamped. Opening one of these asks with a loopback connection
    of its own and sends itself a byte until one comes back stamped (at most `timeout`
    seconds); `on` says whether one did.
    """

    def __init__(self, timeout: float = 1.0) -> None:
        self.on = False
        self._ends: tuple[socket.socket, ...] = ()
        if sys.platform != "linux":
            return
        with socket.create_server(("127.0.0.1", 0)) as listener:
            receiver = socket.create_connection(listener.getsockname(), timeout=timeout)
            sender, _ = listener.accept()
        self._ends = (receiver, sender)
        if not enable(receiver):
            return
        deadline = time.monotonic() + timeout
        buffer = memoryview(bytearray(1))
        while not self.on and time.monotonic() < deadline:
            sender.sendall(b".")
            _, arrived = receive(receiver, buffer)
            self.on = arrived is not None
            if not self.on:
                time.sleep(0.001)  # let the kernel's work queue run

    def close(self) -> None:
        for end in self._ends:
            end.close()
        self._ends = ()

    def __enter__(self) -> StampsOn:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def enable(sock: socket.socket) -> bool:
    """Ask the kernel to stamp what `sock` receives; False where it cannot (not Linux, not an
    Internet socket)."""
    if sys.platform != "linux" or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        return False
    return True


def arrival(ancillary: Ancillary) -> float | None:
    """The `time.monotonic()` at which the kernel received the bytes that came with `ancillary`
    (the control messages of one `recvmsg`); None when they carry no stamp."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            seconds, nanoseconds = _TIMESPEC.unpack_from(data)
            age_ns: int = time.time_ns() - (seconds * 1_000_000_000 + nanoseconds)
            return time.monotonic() - age_ns * 1e-9
    return None


def read_buffer() -> memoryview:
    """A buffer for `receive`, to be reused read after read."""
    return memoryview(bytearray(MAX_READ))


def receive(sock: socket.socket, buffer: memoryview) -> tuple[bytes, float | None]:
    """One read of up to len(`buffer`) bytes from `sock` (through `buffer`, from `read_buffer`),
    with the kernel's arrival time of those bytes (None when the socket was not stamping).
    Raises what `recvmsg_into` raises.

    Into a buffer made once rather than `recvmsg(MAX_READ)`: that allocates MAX_READ bytes for
    every read, and the allocation (a fresh mapping, its page faults, then its shrinking) cost
    about 20 µs per read here, more than the read itself."""
    size, ancillary, _flags, _address = sock.recvmsg_into([buffer], ANCILLARY_SPACE)
    return bytes(buffer[:size]), arrival(ancillary) if ancillary else None
