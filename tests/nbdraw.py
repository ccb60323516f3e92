# memblock tests: a minimal raw NBD client (fixed newstyle, simple replies).
#
# libnbd validates what it sends; this module does not, so a test can
# hand the server any export name bytes (non-UTF-8, 4096 bytes, ...),
# write-type requests on read-only connections, truncated requests and
# other traffic a well-behaved client never produces.
#
# Use with Debian's /usr/bin/python3:  import nbdraw (tests/ on sys.path).

import socket
import struct

NBDMAGIC = b"NBDMAGIC"
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698

OPT_ABORT = 2
OPT_LIST = 3
OPT_GO = 7
REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_ERR = 1 << 31
INFO_EXPORT = 0

CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM = 0, 1, 2, 3, 4
CMD_WRITE_ZEROES = 6
FLAG_READ_ONLY = 1 << 1

# NBD error numbers (protocol values, not the host's errno).
EPERM, EIO, ENOMEM, EINVAL, ENOSPC = 1, 5, 12, 22, 28

REP_NAMES = {
    REP_ERR | 1: "ERR_UNSUP", REP_ERR | 2: "ERR_POLICY",
    REP_ERR | 3: "ERR_INVALID", REP_ERR | 4: "ERR_PLATFORM",
    REP_ERR | 5: "ERR_TLS_REQD", REP_ERR | 6: "ERR_UNKNOWN",
    REP_ERR | 7: "ERR_SHUTDOWN", REP_ERR | 8: "ERR_BLOCK_SIZE_REQD",
    REP_ERR | 9: "ERR_TOO_BIG",
}


class ProtocolError(Exception):
    pass


def _recv(s, n):
    """Exactly n bytes from s, or ProtocolError if the server hangs up."""
    buf = bytearray()
    while len(buf) < n:
        part = s.recv(n - len(buf))
        if not part:
            raise ProtocolError("server closed the connection")
        buf += part
    return bytes(buf)


class Client:
    """One connection in the option phase, then (after go) transmission."""

    def __init__(self, path, timeout=30):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(path)
        hello = _recv(self.s, 18)
        if hello[:8] != NBDMAGIC or struct.unpack(">Q", hello[8:16])[0] != IHAVEOPT:
            raise ProtocolError("not a newstyle NBD server: %r" % hello)
        # Fixed newstyle, no zeroes after a successful go.
        self.s.sendall(struct.pack(">I", 3))
        self.handle = 0

    def close(self):
        self.s.close()

    def _option(self, opt, data):
        self.s.sendall(struct.pack(">QII", IHAVEOPT, opt, len(data)) + data)

    def _reply(self):
        magic, opt, rtype, length = struct.unpack(">QIII", _recv(self.s, 20))
        if magic != REPLY_MAGIC:
            raise ProtocolError("bad option reply magic %#x" % magic)
        return rtype, _recv(self.s, length)

    def go(self, name):
        """NBD_OPT_GO with raw name bytes.  Returns ("ok", size, eflags)
        or (error reply name, message bytes, None); on an error reply the
        connection stays in the option phase and go may be tried again.
        """
        self._option(OPT_GO, struct.pack(">I", len(name)) + name +
                     struct.pack(">H", 0))
        size = eflags = None
        while True:
            rtype, data = self._reply()
            if rtype == REP_INFO:
                if struct.unpack(">H", data[:2])[0] == INFO_EXPORT:
                    size, eflags = struct.unpack(">QH", data[2:12])
            elif rtype == REP_ACK:
                return "ok", size, eflags
            elif rtype & REP_ERR:
                return REP_NAMES.get(rtype, "ERR_%#x" % rtype), data[4:] if len(data) > 4 else data, None
            else:
                raise ProtocolError("unexpected option reply %#x" % rtype)

    def list(self):
        """NBD_OPT_LIST: the export names the server advertises (bytes)."""
        self._option(OPT_LIST, b"")
        names = []
        while True:
            rtype, data = self._reply()
            if rtype == REP_SERVER:
                n = struct.unpack(">I", data[:4])[0]
                names.append(data[4:4 + n])
            elif rtype == REP_ACK:
                return names
            else:
                raise ProtocolError("NBD_OPT_LIST failed: %#x" % rtype)

    def abort(self):
        self._option(OPT_ABORT, b"")
        self.s.close()

    def send_request(self, cmd, offset, length, data=b"", flags=0):
        """Send one request (data may be shorter than length: a truncated
        write); returns its handle."""
        self.handle += 1
        self.s.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, flags, cmd,
                                   self.handle, offset, length) + data)
        return self.handle

    def read_reply(self, length=0):
        """One simple reply: (error, data); data only for a good read."""
        magic, error, handle = struct.unpack(">IIQ", _recv(self.s, 16))
        if magic != SIMPLE_REPLY_MAGIC:
            raise ProtocolError("bad reply magic %#x" % magic)
        data = _recv(self.s, length) if error == 0 and length else b""
        return error, data

    def request(self, cmd, offset, length, data=b"", flags=0):
        self.send_request(cmd, offset, length, data, flags)
        return self.read_reply(length if cmd == CMD_READ else 0)

    def pread(self, offset, length):
        err, data = self.request(CMD_READ, offset, length)
        if err:
            raise ProtocolError("read failed with NBD error %d" % err)
        return data

    def disconnect(self):
        self.send_request(CMD_DISC, 0, 0)
        self.s.close()
