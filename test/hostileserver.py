#!/usr/bin/env python3
"""Scripted FTP servers that behave as the hostile tests need, each one
way that real servers do or might:

  hostileserver.py ADDR PORT MODE [PASVADDR PASVPORT]

  echo        ends a command only at CR LF (as some servers do) and echoes
              MKD's argument with its raw LFs in the 257 reply
  longreply   answers PASV with one reply line of 4,096 bytes and more,
              whose tail from byte 4,096 is a 227 naming PASVPORT
  portprobe   on PORT or EPRT, first tries to connect to the address it
              names (and prints "early open" or "early closed"), then
              refuses it with 500
  greet234    greets with a 234, answers NOOP with a 234 too, and PASV with a 227
  authidle    accepts AUTH TLS with 234 and then just waits
  bytes       echoes every byte it receives, from the first (no FTP at all)
  discard     greets, then reads and drops whatever comes

Otherwise it answers PASV with a 227 naming PASVADDR:PASVPORT, and every
other command with 200. It prints "listening" once it is.
"""
import re
import socket
import sys
import threading

ADDR, PORT, MODE = sys.argv[1], int(sys.argv[2]), sys.argv[3]
PASVADDR = sys.argv[4] if len(sys.argv) > 4 else ADDR
PASVPORT = int(sys.argv[5]) if len(sys.argv) > 5 else 5432


def pasv_reply():
    h = PASVADDR.replace(".", ",")
    return "227 Entering Passive Mode (%s,%d,%d)\r\n" % (h, PASVPORT >> 8, PASVPORT & 0xFF)


def lines(conn, crlf_only):
    """Yields the commands the connection sends, framed at CR LF only, or
    at LF as most servers do."""
    buf = b""
    sep = b"\r\n" if crlf_only else b"\n"
    while True:
        data = conn.recv(65536)
        if not data:
            return
        buf += data
        while sep in buf:
            line, buf = buf.split(sep, 1)
            yield line.rstrip(b"\r")


def probe(target):
    fam = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
    s = socket.socket(fam)
    s.settimeout(1)
    try:
        s.connect(target)
        return "early open"
    except OSError:
        return "early closed"
    finally:
        s.close()


def serve(conn):
    try:
        if MODE == "bytes":
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                conn.sendall(data)
        greeting = "234 Proceed.\r\n" if MODE == "greet234" else "220 scripted server\r\n"
        conn.sendall(greeting.encode())
        if MODE == "discard":
            while conn.recv(1 << 20):
                pass
            return
        for line in lines(conn, MODE == "echo"):
            verb, _, arg = line.partition(b" ")
            verb = verb.upper()
            if verb == b"MKD":
                conn.sendall(b'257 "' + arg + b'" created\r\n')
            elif verb == b"PASV":
                if MODE == "longreply":
                    head = "500 " + "x" * (4096 - 4)
                    conn.sendall((head + pasv_reply()).encode())
                else:
                    conn.sendall(pasv_reply().encode())
            elif verb in (b"PORT", b"EPRT") and MODE == "portprobe":
                a = arg.decode()
                if verb == b"PORT":
                    n = [int(x) for x in a.split(",")]
                    target = (".".join(map(str, n[:4])), n[4] * 256 + n[5])
                else:
                    parts = a.split(a[0])
                    target = (parts[2], int(parts[3]))
                print(probe(target), target[1], flush=True)
                conn.sendall(b"500 Illegal PORT command.\r\n")
            elif verb == b"AUTH":
                conn.sendall(b"234 Proceed with negotiation.\r\n")
                if MODE == "authidle":
                    while conn.recv(65536):
                        pass
                    return
            elif verb == b"NOOP" and MODE == "greet234":
                conn.sendall(b"234 Proceed.\r\n")
            elif verb == b"QUIT":
                conn.sendall(b"221 Goodbye.\r\n")
                return
            else:
                conn.sendall(b"200 ok\r\n")
    except OSError:
        pass
    finally:
        conn.close()


def main():
    fam = socket.AF_INET6 if ":" in ADDR else socket.AF_INET
    s = socket.socket(fam)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((ADDR, PORT))
    s.listen(256)
    print("listening", flush=True)
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()


if __name__ == "__main__":
    main()
