// A reference tus 1.0 server for cambackup's interop tests (tests/it/interop.rs): the
// upstream @tus/server with @tus/file-store, as a cloud operator would deploy it, plus the two
// things a test needs around it: a bearer-token check and a log of every request.
//
//   TUS_TOKEN=secret node interop/server.mjs STORE_DIR LOG_FILE
//
// Listens on 127.0.0.1 on a port the kernel picks and prints one JSON line on stdout once it
// accepts connections: {"url": "http://127.0.0.1:PORT/files/", "port": PORT, "pid": PID}.
// The tus creation URL is that `url`.
//
// STORE_DIR: FileStore's directory: the data of upload ID as `ID`, its info as `ID.json`
//   ({"id", "size", "offset", "metadata": {...}, "creation_date"}).
// LOG_FILE: one JSON line per finished (or aborted) request:
//   {"t", "method", "url", "status", "aborted", "req": {selected request headers},
//    "res": {"upload-offset", "location"}}.
//   Authorization is logged as "bearer-ok" / "bearer-wrong" / "other" / absent, never the token.
//
// Environment:
//   TUS_TOKEN     required; requests without `Authorization: Bearer TUS_TOKEN` get 401, on every
//                 method (the contract has the client send it on every request, OPTIONS too).
//   TUS_LOCATION  "absolute" (default: http://127.0.0.1:PORT/files/ID) or "relative"
//                 (/files/ID, which the client resolves against the creation URL).
//   TUS_TLS_CERT, TUS_TLS_KEY  PEM files: serve HTTPS (node's https.createServer, OpenSSL)
//                 with the same handler, and print an https:// url (benches/tus-server.sh
//                 TLS=1). The log also counts TLS handshakes: {"tls_handshake": N} lines.

import { appendFileSync, mkdirSync, readFileSync } from "node:fs";
import { createServer as createHttpServer } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import { FileStore } from "@tus/file-store";
import { Server } from "@tus/server";

const [storeDir, logFile] = process.argv.slice(2);
const token = process.env.TUS_TOKEN;
if (!storeDir || !logFile || !token) {
  console.error("usage: TUS_TOKEN=TOKEN node server.mjs STORE_DIR LOG_FILE");
  process.exit(2);
}
const location = process.env.TUS_LOCATION ?? "absolute";
if (location !== "absolute" && location !== "relative") {
  console.error(`TUS_LOCATION must be "absolute" or "relative", not ${JSON.stringify(location)}`);
  process.exit(2);
}
mkdirSync(storeDir, { recursive: true });

const tlsCert = process.env.TUS_TLS_CERT;
const tlsKey = process.env.TUS_TLS_KEY;
const tls = tlsCert !== undefined && tlsKey !== undefined;

const tus = new Server({
  path: "/files",
  datastore: new FileStore({ directory: storeDir }),
  relativeLocation: location === "relative",
  // Behind no proxy, @tus/server cannot tell it serves HTTPS: absolute locations say so here.
  ...(tls && location === "absolute"
    ? { generateUrl: (_req, { host, path, id }) => `https://${host}${path}/${id}` }
    : {}),
});

// Request headers worth seeing in a failure report; anything else a client sends is logged by
// name only (`other_headers`), so a test can also check that nothing unexpected goes out.
const LOGGED = [
  "tus-resumable",
  "upload-offset",
  "upload-length",
  "upload-metadata",
  "upload-checksum",
  "content-type",
  "content-length",
  "user-agent",
];
const PLUMBING = new Set(["host", "authorization", "accept", "connection", "transfer-encoding"]);

function authorization(value) {
  if (value === undefined) return undefined;
  if (value === `Bearer ${token}`) return "bearer-ok";
  return value.startsWith("Bearer ") ? "bearer-wrong" : "other";
}

// writeHead's headers come as an object, [[name, value], ...] or [name, value, name, value].
function headerPairs(headers) {
  if (headers === null || typeof headers !== "object") return [];
  if (!Array.isArray(headers)) return Object.entries(headers);
  if (headers.every(Array.isArray)) return headers;
  const pairs = [];
  for (let i = 0; i + 1 < headers.length; i += 2) pairs.push([headers[i], headers[i + 1]]);
  return pairs;
}

const handler = (req, res) => {
  const entry = {
    t: Date.now(),
    method: req.method,
    url: req.url,
    req: {},
    other_headers: [],
  };
  for (const name of LOGGED) {
    if (req.headers[name] !== undefined) entry.req[name] = req.headers[name];
  }
  entry.req.authorization = authorization(req.headers.authorization);
  for (const name of Object.keys(req.headers)) {
    if (!LOGGED.includes(name) && !PLUMBING.has(name)) entry.other_headers.push(name);
  }
  // srvx hands the tus answer's headers straight to writeHead, so res.getHeader cannot see
  // them: note them on the way through.
  const seen = {};
  const writeHead = res.writeHead.bind(res);
  res.writeHead = (...args) => {
    for (const [name, value] of headerPairs(args[args.length - 1])) {
      seen[String(name).toLowerCase()] = String(value);
    }
    return writeHead(...args);
  };
  // "close" fires for answered and for aborted requests (a killed client mid-PATCH) alike.
  res.on("close", () => {
    entry.status = res.statusCode;
    entry.aborted = !res.writableFinished;
    entry.res = { "upload-offset": seen["upload-offset"], location: seen.location };
    entry.ms = Date.now() - entry.t;
    appendFileSync(logFile, `${JSON.stringify(entry)}\n`);
  });

  if (entry.req.authorization !== "bearer-ok") {
    // Drain nothing: the connection closes after the answer, like an auth proxy in front.
    res.writeHead(401, { "Content-Type": "text/plain", Connection: "close" });
    res.end("missing or wrong bearer token\n");
    return;
  }
  tus.handle(req, res).catch((err) => {
    console.error(`tus handler failed on ${req.method} ${req.url}:`, err);
    if (!res.headersSent) {
      res.writeHead(500);
    }
    res.end();
  });
};
const http = tls
  ? createHttpsServer({ cert: readFileSync(tlsCert), key: readFileSync(tlsKey) }, handler)
  : createHttpServer(handler);
if (tls) {
  // Full handshakes and resumptions alike: one per connection the client opens.
  let handshakes = 0;
  http.on("secureConnection", (socket) => {
    handshakes += 1;
    appendFileSync(
      logFile,
      `${JSON.stringify({ t: Date.now(), tls_handshake: handshakes, cipher: socket.getCipher().standardName, protocol: socket.getProtocol() })}\n`,
    );
  });
}

http.listen({ host: "127.0.0.1", port: 0 }, () => {
  const { port } = http.address();
  process.stdout.write(
    `${JSON.stringify({ url: `${tls ? "https" : "http"}://127.0.0.1:${port}/files/`, port, pid: process.pid })}\n`,
  );
});

for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => process.exit(0));
}
