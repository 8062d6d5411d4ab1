#!/usr/bin/env python3
"""A scripted FTP server for ftpgate's hostile tests: it accepts AUTH TLS
(234) and then answers plain-text commands in plain text, as no real
server would, so that a test can check that ftpgate treats the session
as encrypted whatever it sees.

  ftpserver.py ADDR PORT
"""
import socket
import sys
import threading


def serve(conn):
    f = conn.makefile("rb")
    conn.sendall(b"220 scripted server\r\n")
    for line in f:
        cmd = line.strip().split(b" ", 1)[0].upper()
        if cmd == b"AUTH":
            conn.sendall(b"234 Proceed with negotiation.\r\n")
        elif cmd in (b"PORT", b"EPRT"):
            conn.sendall(b"200 PORT command successful.\r\n")
        elif cmd == b"PASV":
            conn.sendall(b"227 Entering Passive Mode (198,51,100,20,8,174).\r\n")
        elif cmd == b"QUIT":
            conn.sendall(b"221 Goodbye.\r\n")
            break
        else:
            conn.sendall(b"200 ok\r\n")
    conn.close()


def main():
    fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
    s = socket.socket(fam)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], int(sys.argv[2])))
    s.listen()
    print("listening", flush=True)
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()


if __name__ == "__main__":
    main()
