"""Is a port listening in the sandbox netns? Asked of the kernel through netlink sock_diag (inet_diag).

Reading /proc/PID/net/tcp makes the kernel walk its whole established-connection hash, shared by
every netns (~5 ms per table on a busy host). A SOCK_DIAG_BY_FAMILY dump asking for listening TCP
sockets walks only the listening hash, and one with idiag_sport set answers for that one port. A
sock_diag socket answers for the netns it was created in: it is opened inside the sandbox netns
(netns.py) and held by the supervisor for the sandbox's life.

Answers are parsed defensively: anything unexpected (an error, a short or foreign message, no
answer at all) is None, and the caller reads the /proc tables instead.
"""

from __future__ import annotations

import itertools
import os
import socket
import struct

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_NLM_F_REQUEST = 0x1
_NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
_NLMSG = struct.Struct("=IHHII")  # struct nlmsghdr: len, type, flags, seq, pid
# struct inet_diag_req_v2: family, protocol, ext, pad, states; inet_diag_sockid: sport, dport (big
# endian), src[4], dst[4], if, cookie[2]
_REQ = struct.Struct("=BBBBI")
_SOCKID = struct.Struct("!HH16s16s")
_SOCKID_TAIL = struct.Struct("=III")
_REQ_LEN = _NLMSG.size + _REQ.size + _SOCKID.size + _SOCKID_TAIL.size
_MSG_HEAD = struct.Struct("=BBBB")  # inet_diag_msg: family, state, timer, retrans; then its sockid
_MSG_MIN = _MSG_HEAD.size + _SOCKID.size + _SOCKID_TAIL.size + 5 * 4  # expires, rqueue, wqueue, uid, inode
_TCP_LISTEN = 10
_ALL_STATES = 0xFFFFFFFF  # a bound UDP socket is TCP_CLOSE, a connected one TCP_ESTABLISHED: all are listed
_RECV = 65536

# the /proc table each request stands for: (family, protocol, states)
TABLES = {
    "udp": (socket.AF_INET, socket.IPPROTO_UDP, _ALL_STATES),
    "udp6": (socket.AF_INET6, socket.IPPROTO_UDP, _ALL_STATES),
    "tcp": (socket.AF_INET, socket.IPPROTO_TCP, 1 << _TCP_LISTEN),
    "tcp6": (socket.AF_INET6, socket.IPPROTO_TCP, 1 << _TCP_LISTEN),
}


def open_socket() -> socket.socket:
    """A sock_diag socket in the calling thread's netns (it answers for that netns ever after)."""
    return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)


def request(table: str, port: int, seq: int) -> bytes:
    """A dump request for the sockets of one /proc table (listening TCP, any UDP) on port."""
    family, protocol, states = TABLES[table]
    return (_NLMSG.pack(_REQ_LEN, SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST | _NLM_F_DUMP, seq, 0)
            + _REQ.pack(family, protocol, 0, 0, states)
            + _SOCKID.pack(port, 0, bytes(16), bytes(16)) + _SOCKID_TAIL.pack(0, 0, 0))


def parse(data: bytes, table: str, port: int, seq: int) -> tuple[bool, bool] | None:
    """(a socket of table on port is in these messages, the dump is done) for one datagram of
    answers to request(table, port, seq); None when it holds anything unexpected."""
    family, _protocol, states = TABLES[table]
    found, at = False, 0
    while at < len(data):
        if len(data) - at < _NLMSG.size:
            return None
        length, kind, _flags, got_seq, _pid = _NLMSG.unpack_from(data, at)
        if length < _NLMSG.size or at + length > len(data) or got_seq != seq:
            return None
        if kind == _NLMSG_DONE:
            return found, True
        if kind != SOCK_DIAG_BY_FAMILY or length - _NLMSG.size < _MSG_MIN:
            return None  # an NLMSG_ERROR (no inet_diag for the protocol, say) or a stranger
        msg_family, state, _timer, _retrans = _MSG_HEAD.unpack_from(data, at + _NLMSG.size)
        sport = _SOCKID.unpack_from(data, at + _NLMSG.size + _MSG_HEAD.size)[0]
        if msg_family != family or not states & (1 << state):
            return None  # the kernel filters by family and state: an answer outside them is not trusted
        found = found or sport == port  # the port filter is checked here too (an old kernel may ignore it)
        at += (length + 3) & ~3  # NLMSG_ALIGN
    return found, False


class SockDiag:
    """A sock_diag socket opened in one netns (inode: the netns's), asked one port at a time."""

    def __init__(self, sock: socket.socket, inode: int) -> None:
        """Take ownership of sock."""
        self.sock = sock
        self.inode = inode
        self._seq = itertools.count(1)

    def close(self) -> None:
        """Release the socket."""
        self.sock.close()

    def covers(self, pid: int) -> bool:
        """pid is in the netns this socket answers for."""
        try:
            return os.stat(f"/proc/{pid}/ns/net").st_ino == self.inode
        except OSError:
            return False

    def listens(self, table: str, port: int) -> bool | None:
        """A listening TCP socket (tcp, tcp6) or any UDP socket (udp, udp6) is on port in the netns;
        None when the kernel's answer cannot be had or read (ask the /proc table then)."""
        if not 0 < port < 65536:
            return None
        seq = next(self._seq) & 0xFFFFFFFF
        try:
            self.sock.send(request(table, port, seq))
            found = False
            while True:  # the kernel dumps as it is read: each answer is queued before recv returns
                parsed = parse(self.sock.recv(_RECV, socket.MSG_DONTWAIT), table, port, seq)
                if parsed is None:
                    self._drain()
                    return None
                found = found or parsed[0]
                if parsed[1]:
                    return found
        except (OSError, struct.error):  # EAGAIN: no answer queued; a closed or foreign socket
            self._drain()
            return None

    def _drain(self) -> None:
        """Read what is left of an answer given up on (the next dump is refused while one runs)."""
        for _ in range(64):
            try:
                if not self.sock.recv(_RECV, socket.MSG_DONTWAIT):
                    return
            except OSError:
                return
