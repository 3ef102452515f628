"""A WSGI app for gunicorn under sup. gunicorn reads LISTEN_FDS itself (it
checks LISTEN_PID strictly) and sends READY=1, so it needs no change:

    sup --bind 127.0.0.1:8080 --workers 2 --ready notify -- gunicorn --chdir examples/python wsgi:app
"""
import os


def app(environ, start_response):
    body = "hello from gunicorn under sup worker {} (pid {}, generation {})\n".format(
        os.environ.get("SUP_WORKER"), os.getpid(), os.environ.get("SUP_GENERATION")
    ).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
