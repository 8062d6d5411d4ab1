#!/usr/bin/env python3
"""Scripted FTP sessions for the ftpgate lab, on Python's ftplib.

  ftpclient.py get HOST MODE FILE OUT [WAIT]
                                        download FILE in MODE (pasv, epsv, port, eprt),
                                        WAIT seconds after logging in (@PATH: once PATH
                                        exists)
  ftpclient.py again HOST MODE FILE @PATH
                                        download FILE, print "first N" (bytes), wait until
                                        PATH exists, download it again on the same
                                        session, print "second N"
  ftpclient.py chatter HOST SECS        log in, print "ready", then send NOOP after NOOP
                                        for SECS seconds
  ftpclient.py churn HOST SECS          open control connections one after another for
                                        SECS seconds: greeting, QUIT, close
  ftpclient.py hold HOST COMMAND SECS   log in, send COMMAND (e.g. PASV) and keep the
                                        session open SECS seconds without connecting;
                                        prints the reply, then QUIT
  ftpclient.py raw HOST SECS LINE...    send each LINE, print each reply, keep the
                                        session open SECS seconds, then QUIT
  ftpclient.py load HOST MODE FILE N    N transfers of FILE on one session, each on a
                                        new data connection; prints how many succeeded
  ftpclient.py timedload HOST MODE FILE N
                                        the same, and prints "ok K slowest MS": how many
                                        succeeded and the slowest transfer, in ms
  ftpclient.py idle HOST N SECS [SRC]   N sessions at once that log in and idle SECS
  ftpclient.py holdmany HOST N SECS     N sessions at once, each sends PASV and prints
                                        "port P" for it, then all wait SECS and QUIT
  ftpclient.py tlsget HOST FILE OUT     download FILE over explicit FTPS (AUTH TLS,
                                        PROT P, passive), certificate not checked
  ftpclient.py tlsload HOST FILE N [SRC]
                                        N such transfers on one session (from
                                        address SRC)
  ftpclient.py tlshold HOST SECS [SRC]  log in over FTPS (from address SRC), send PASV (inside TLS), print
                                        the reply, keep the session SECS seconds
  ftpclient.py send HOST ITEM...        a raw TCP session: each ITEM is sent as it is
                                        (Python escapes such as \r\n decoded), or is
                                        @read (print what arrives within a second),
                                        @sleep=SECS, or @src=ADDR (first: bind to ADDR);
                                        prints "read: ..." per read

Exit status 0 on success, 1 on failure.
"""
import ftplib
import os
import socket
import ssl
import sys
import time


# With FTP_DSTOPTS=1 in the environment, every segment of the control
# connection carries an IPv6 destination options header (a PadN option).
DSTOPTS = bytes([0, 0, 1, 4, 0, 0, 0, 0])


def split_host(host):
    """HOST, [HOST]:PORT or HOST:PORT (IPv4) -> (host, port)."""
    if host.startswith("["):
        h, _, p = host[1:].partition("]")
        return h, int(p[1:]) if p.startswith(":") else 21
    if host.count(":") == 1:
        h, p = host.split(":")
        return h, int(p)
    return host, 21


def connect(host, timeout=5):
    host, port = split_host(host)
    ftp = ftplib.FTP(timeout=timeout)
    if os.environ.get("FTP_DSTOPTS") == "1":
        sock = socket.socket(socket.AF_INET6)
        sock.settimeout(timeout)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_DSTOPTS, DSTOPTS)
        sock.connect((host, port))
        ftp.sock = sock
        ftp.af = sock.family
        ftp.host, ftp.port = host, port
        ftp.file = sock.makefile("r", encoding=ftp.encoding)
        ftp.welcome = ftp.getresp()
    else:
        ftp.connect(host, port)
    ftp.login()
    return ftp


def set_mode(ftp, mode):
    if mode in ("pasv", "epsv"):
        ftp.set_pasv(True)
        # ftplib always uses EPSV on IPv6; force it on IPv4 when asked.
        if mode == "epsv" and ftp.af == socket.AF_INET:
            ftp.makepasv = lambda: ftplib.parse229(ftp.sendcmd("EPSV"), ftp.sock.getpeername())
    elif mode in ("port", "eprt"):
        ftp.set_pasv(False)
        if mode == "eprt" and ftp.af == socket.AF_INET:
            ftp.sendport = ftp.sendeprt
    else:
        raise SystemExit("mode must be pasv, epsv, port or eprt")


def get(host, mode, name, out, wait="0"):
    ftp = connect(host)
    if wait.startswith("@"):
        deadline = time.monotonic() + 60
        while not os.path.exists(wait[1:]):
            if time.monotonic() > deadline:
                raise SystemExit("no " + wait[1:] + " within 60 s")
            time.sleep(0.01)
    else:
        time.sleep(float(wait))
    set_mode(ftp, mode)
    with open(out, "wb") as f:
        ftp.retrbinary("RETR " + name, f.write)
    ftp.quit()


def again(host, mode, name, gate):
    """One session, a transfer before and one after something happens
    (a restart of ftpgate): the second proves the session survived."""
    ftp = connect(host, timeout=30)
    set_mode(ftp, mode)
    for label in ("first", "second"):
        if label == "second":
            deadline = time.monotonic() + 60
            while not os.path.exists(gate[1:]):
                if time.monotonic() > deadline:
                    raise SystemExit("no " + gate[1:] + " within 60 s")
                time.sleep(0.05)
        got = bytearray()
        ftp.retrbinary("RETR " + name, got.extend)
        print(label, len(got), flush=True)
    ftp.quit()


def hold(host, command, secs):
    ftp = connect(host)
    print(ftp.sendcmd(command), flush=True)
    time.sleep(float(secs))
    ftp.quit()


def raw(host, secs, lines):
    ftp = connect(host)
    for line in lines:
        try:
            print(ftp.sendcmd(line), flush=True)
        except ftplib.Error as e:
            print(e, flush=True)
    time.sleep(float(secs))
    ftp.quit()


def chatter(host, secs):
    """A control connection that is never quiet: copies of its segments
    keep arriving at the gateway's ftpgate."""
    ftp = connect(host)
    print("ready", flush=True)
    end = time.monotonic() + float(secs)
    while time.monotonic() < end:
        ftp.voidcmd("NOOP")
        time.sleep(0.001)
    ftp.quit()


def churn(host, secs):
    """New control connections, one after another: their SYNs keep
    arriving at the gateway's ftpgate."""
    h, port = split_host(host)
    end = time.monotonic() + float(secs)
    print("ready", flush=True)
    while time.monotonic() < end:
        try:
            ftp = ftplib.FTP(timeout=5)
            ftp.connect(h, port)
            ftp.quit()
        except (ftplib.Error, OSError):
            time.sleep(0.01)


def retr_many(ftp, name, n):
    """N downloads of NAME on one session; prints how many succeeded."""
    ok = 0
    for _ in range(int(n)):
        try:
            ftp.retrbinary("RETR " + name, lambda b: None)
            ok += 1
        except (ftplib.Error, OSError) as e:
            print("transfer failed:", e, file=sys.stderr)
    ftp.quit()
    print(ok)
    return ok == int(n)


def load(host, mode, name, n):
    ftp = connect(host, timeout=10)
    set_mode(ftp, mode)
    return retr_many(ftp, name, n)


def timedload(host, mode, name, n):
    ftp = connect(host, timeout=10)
    set_mode(ftp, mode)
    ok, slowest = 0, 0.0
    for _ in range(int(n)):
        start = time.monotonic()
        try:
            ftp.retrbinary("RETR " + name, lambda b: None)
            ok += 1
        except (ftplib.Error, OSError) as e:
            print("transfer failed:", e, file=sys.stderr)
        slowest = max(slowest, time.monotonic() - start)
    ftp.quit()
    print("ok", ok, "slowest", int(slowest * 1000))
    return ok == int(n)


def idle(host, n, secs, src=None):
    sessions = []
    for _ in range(int(n)):
        h, port = split_host(host)
        ftp = ftplib.FTP(timeout=10, source_address=(src, 0) if src else None)
        ftp.connect(h, port)
        ftp.login()
        sessions.append(ftp)
    print("ready", len(sessions), flush=True)
    time.sleep(float(secs))


def holdmany(host, n, secs):
    sessions = []
    for _ in range(int(n)):
        ftp = connect(host)
        port = ftplib.parse227(ftp.sendcmd("PASV"))[1]
        print("port", port, flush=True)
        sessions.append(ftp)
    print("ready", flush=True)
    time.sleep(float(secs))
    for ftp in sessions:
        ftp.quit()


def tls_connect(host, timeout=10, src=None):
    host, port = split_host(host)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ftp = ftplib.FTP_TLS(context=ctx, timeout=timeout, source_address=(src, 0) if src else None)
    ftp.connect(host, port)
    ftp.auth()
    ftp.login()
    ftp.prot_p()
    return ftp


def tlsget(host, name, out):
    ftp = tls_connect(host)
    with open(out, "wb") as f:
        ftp.retrbinary("RETR " + name, f.write)
    ftp.quit()


def tlsload(host, name, n, src=None):
    return retr_many(tls_connect(host, timeout=20, src=src), name, n)


def tlshold(host, secs, src=None):
    ftp = tls_connect(host, src=src)
    print(ftp.sendcmd("PASV"), flush=True)
    time.sleep(float(secs))
    ftp.quit()


def send(host, items):
    src = None
    if items and items[0].startswith("@src="):
        src, items = items[0][5:], items[1:]
    h, port = split_host(host)
    fam = socket.AF_INET6 if ":" in h else socket.AF_INET
    s = socket.socket(fam)
    if src:
        s.bind((src, 0))
    s.settimeout(5)
    s.connect((h, port))
    for item in items:
        if item == "@read":
            s.settimeout(1)
            got = b""
            try:
                while True:
                    data = s.recv(65536)
                    if not data:
                        break
                    got += data
            except socket.timeout:
                pass
            print("read:", got.decode("latin-1").encode("unicode_escape").decode(), flush=True)
        elif item.startswith("@sleep="):
            time.sleep(float(item[7:]))
        else:
            s.sendall(item.encode("latin-1").decode("unicode_escape").encode("latin-1"))
    s.close()


def main(argv):
    if len(argv) < 2:
        raise SystemExit(__doc__)
    cmd, args = argv[1], argv[2:]
    try:
        if cmd == "get":
            get(*args)
        elif cmd == "again":
            again(*args)
        elif cmd == "hold":
            hold(*args)
        elif cmd == "chatter":
            chatter(*args)
        elif cmd == "churn":
            churn(*args)
        elif cmd == "raw":
            raw(args[0], args[1], args[2:])
        elif cmd == "load":
            return 0 if load(*args) else 1
        elif cmd == "timedload":
            return 0 if timedload(*args) else 1
        elif cmd == "idle":
            idle(*args)
        elif cmd == "holdmany":
            holdmany(*args)
        elif cmd == "tlsget":
            tlsget(*args)
        elif cmd == "tlsload":
            return 0 if tlsload(*args) else 1
        elif cmd == "tlshold":
            tlshold(*args)
        elif cmd == "send":
            send(args[0], args[1:])
        else:
            raise SystemExit(__doc__)
    except (ftplib.Error, OSError) as e:
        print("error:", e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
