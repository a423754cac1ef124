"""A kdb+ client over TLS written by hand (Python's ssl and the IPC bytes),
for crates/qmesh/tests/tls.rs: PyKX unlicensed does not do TLS.

usage: tls_kdb_client.py PORT CAFILE QUERY

Connects to 127.0.0.1:PORT with TLS, checking the server's certificate
against CAFILE (and the name 127.0.0.1), does the kdb+ handshake (no user,
capability 3), sends QUERY as a sync char vector and reads the answer.
Prints one JSON line:

  {"cert_sha256": hex of the server certificate's DER,
   "capability": the byte the server answered,
   "msg_type": 2 for a response,
   "type": the answer's kdb+ type (98 a table, -128 an error),
   "error": the error text when type is -128}

On a failed TLS handshake: {"tls_error": text} (exit 0, the test decides).
"""

import hashlib
import json
import socket
import ssl
import struct
import sys


def read_exact(s, n):
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise EOFError("closed after %d of %d bytes" % (len(out), n))
        out += chunk
    return out


def main():
    port, cafile, query = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    ctx = ssl.create_default_context(cafile=cafile)
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        s = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    except (ssl.SSLError, OSError) as e:
        print(json.dumps({"tls_error": str(e)}))
        return
    cert = s.getpeercert(binary_form=True)
    out = {"cert_sha256": hashlib.sha256(cert).hexdigest()}
    # the kdb+ handshake: user:password (empty), capability 3, NUL
    s.sendall(b"\x03\x00")
    out["capability"] = read_exact(s, 1)[0]
    body = struct.pack("<bbi", 10, 0, len(query)) + query.encode()
    # little endian, sync, not compressed, reserved; total length
    s.sendall(struct.pack("<bbbbi", 1, 1, 0, 0, 8 + len(body)) + body)
    endian, msg_type, _, _, length = struct.unpack("<bbbbi", read_exact(s, 8))
    reply = read_exact(s, length - 8)
    out["msg_type"] = msg_type
    out["type"] = struct.unpack("<b", reply[:1])[0]
    if out["type"] == -128:
        out["error"] = reply[1:].split(b"\x00")[0].decode()
    s.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
