// A Node app under sup: listen on the socket sup passes (fd 3), report
// readiness through systemd-notify (Node has no datagram unix sockets; sup
// attributes a READY=1 from a child in the worker's process group), and
// stop gracefully on TERM.
//
//   sup --bind 127.0.0.1:8080 --workers 2 --ready notify -- node examples/node/app.js
"use strict";
const http = require("http");
const { execFile } = require("child_process");

if (process.env.LISTEN_PID !== String(process.pid) || Number(process.env.LISTEN_FDS) < 1) {
  console.error("app.js: no socket was passed; run me under sup --bind ADDR");
  process.exit(1);
}

const server = http.createServer((req, res) => {
  const body = `hello from node worker ${process.env.SUP_WORKER} (pid ${process.pid}, generation ${process.env.SUP_GENERATION})\n`;
  res.writeHead(200, { "Content-Type": "text/plain", "Content-Length": Buffer.byteLength(body) });
  res.end(body);
});

server.listen({ fd: 3 }, () => {
  if (process.env.NOTIFY_SOCKET) {
    execFile("systemd-notify", ["--ready", "--status=serving"], (err) => {
      if (err) console.error(`app.js: systemd-notify failed: ${err.message}`);
    });
  }
});

process.on("SIGTERM", () => server.close(() => process.exit(0)));
