"""An ASGI app for uvicorn and hypercorn under sup. Neither reads LISTEN_FDS;
both take the fd on their command line, which sup fills in with {fd}:

    sup --bind 127.0.0.1:8080 --workers 2 --ready delay:1s -- uvicorn --app-dir examples/python --fd {fd} asgi:app
    sup --bind 127.0.0.1:8080 --workers 2 --ready delay:1s -- hypercorn --root-path '' --bind fd://{fd} examples/python/asgi.py:app
"""
import os


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = "hello from {} under sup worker {} (pid {}, generation {})\n".format(
        os.environ.get("SUP_SERVER", "asgi"), os.environ.get("SUP_WORKER"), os.getpid(), os.environ.get("SUP_GENERATION")
    ).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
