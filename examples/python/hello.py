#!/usr/bin/env python3
"""A tiny HTTP app that serves the socket sup passes it. Standard library only.

    sup --bind 127.0.0.1:8080 --workers 4 -- python3 examples/python/hello.py

It finds its socket the systemd way (LISTEN_FDS, with LISTEN_PID checked
against its own pid, as real servers do), answers with the worker's slot,
pid and generation, and stops gracefully on TERM: the request in flight
finishes, then it exits.
"""

import os
import signal
import socket
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

SD_LISTEN_FDS_START = 3


def inherited_socket():
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or int(os.environ.get("LISTEN_FDS", "0")) < 1:
        sys.exit("hello.py: no socket was passed; run me under sup --bind ADDR -- python3 hello.py")
    return socket.socket(fileno=SD_LISTEN_FDS_START)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = "hello from worker {} (pid {}, generation {})\n".format(
            os.environ.get("SUP_WORKER", "?"), os.getpid(), os.environ.get("SUP_GENERATION", "?")
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        sys.stderr.write("worker {} pid {}: {}\n".format(os.environ.get("SUP_WORKER"), os.getpid(), fmt % args))


class InheritedServer(HTTPServer):
    """An HTTPServer on a socket that is already bound and listening."""

    def __init__(self, sock):
        super().__init__(("", 0), Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.server_name, self.server_port = "sup", 0


def main():
    sock = inherited_socket()
    # Non-blocking, as gunicorn does: every worker waits on the same socket,
    # and when one connection wakes them all, the ones that lose the race
    # must not block in accept() (where TERM could not reach the loop).
    sock.setblocking(False)
    server = InheritedServer(sock)
    server.timeout = 0.5
    stopping = []
    # Graceful stop: the request in flight finishes, no new one is taken.
    # (A flag checked between requests: serve_forever's shutdown() would be
    # lost if TERM came before serve_forever started.)
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    while not stopping:
        server.handle_request()


if __name__ == "__main__":
    main()
