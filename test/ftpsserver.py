#!/usr/bin/env python3
"""A small FTPS server for ftpgate's lab: AUTH TLS, PBSZ, PROT, USER/PASS,
TYPE, PASV/EPSV (from a fixed range), RETR, and CCC, which real packaged
servers (vsftpd) do not offer: after CCC the control connection goes back
to clear text (a TLS close_notify, then plain lines), so that a test can
check that ftpgate closes the session's scoped range and opens exact
pinholes again.

  ftpsserver.py ADDR PORT CERT KEY ROOT LO HI
"""
import os
import random
import socket
import ssl
import sys
import threading


def serve(conn, ctx, root, lo, hi, fam):
    sock = conn
    f = sock.makefile("rb")

    def send(line):
        sock.sendall(line.encode() + b"\r\n")

    send("220 ftpsserver ready")
    prot_p = False
    pasv = None
    while True:
        raw = f.readline()
        if not raw:
            break
        line = raw.decode(errors="replace").strip()
        cmd, _, arg = line.partition(" ")
        cmd = cmd.upper()
        if cmd == "AUTH":
            send("234 Proceed with negotiation.")
            sock = ctx.wrap_socket(sock, server_side=True)
            f = sock.makefile("rb")
        elif cmd == "CCC":
            send("200 Control connection returns to clear text.")
            sock = sock.unwrap()  # close_notify both ways, then plain
            f = sock.makefile("rb")
        elif cmd == "PBSZ":
            send("200 PBSZ=0")
        elif cmd == "PROT":
            prot_p = arg.upper() == "P"
            send("200 PROT now " + ("Private" if prot_p else "Clear"))
        elif cmd == "USER":
            send("331 Please specify the password.")
        elif cmd == "PASS":
            send("230 Login successful.")
        elif cmd in ("TYPE", "MODE", "STRU", "OPTS"):
            send("200 ok")
        elif cmd in ("FEAT",):
            send("211-Features:\r\n AUTH TLS\r\n CCC\r\n PBSZ\r\n PROT\r\n EPSV\r\n211 End")
        elif cmd in ("PWD",):
            send('257 "/"')
        elif cmd == "SIZE":
            try:
                send("213 %d" % os.path.getsize(os.path.join(root, os.path.basename(arg))))
            except OSError:
                send("550 no such file")
        elif cmd in ("PASV", "EPSV"):
            pasv = socket.socket(fam)
            pasv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            for _ in range(100):
                p = random.randint(lo, hi)
                try:
                    pasv.bind((sys.argv[1], p))
                    break
                except OSError:
                    continue
            pasv.listen(1)
            pasv.settimeout(10)
            if cmd == "PASV":
                h = sys.argv[1].replace(".", ",")
                send("227 Entering Passive Mode (%s,%d,%d)." % (h, p >> 8, p & 255))
            else:
                send("229 Entering Extended Passive Mode (|||%d|)" % p)
        elif cmd == "RETR":
            if pasv is None:
                send("425 Use PASV first.")
                continue
            try:
                data, _ = pasv.accept()
            except OSError:
                send("425 No data connection.")
                pasv.close()
                pasv = None
                continue
            pasv.close()
            pasv = None
            send("150 Opening BINARY mode data connection.")
            if prot_p:
                data = ctx.wrap_socket(data, server_side=True)
            with open(os.path.join(root, os.path.basename(arg)), "rb") as fh:
                data.sendall(fh.read())
            if prot_p:
                try:
                    data = data.unwrap()
                except (OSError, ssl.SSLError):
                    pass
            data.close()
            send("226 Transfer complete.")
        elif cmd == "QUIT":
            send("221 Goodbye.")
            break
        else:
            send("502 Command not implemented.")
    sock.close()


def main():
    addr, port, cert, key, root, lo, hi = sys.argv[1:8]
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    s = socket.socket(fam)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, int(port)))
    s.listen()
    print("listening", flush=True)
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c, ctx, root, int(lo), int(hi), fam), daemon=True).start()


if __name__ == "__main__":
    main()
