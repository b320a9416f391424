// One tus instance of the reference receiving tier: upstream @tus/server with @tus/s3-store,
// the lock and the upload-info cache in Redis, so that any number of these behind a
// round-robin balancer serve any request of any upload. `cloud/lab` starts two or more.
//
//   node server.mjs            (configured by the environment below)
//
// Listens on 127.0.0.1:TUS_PORT. Serves tus 1.0 at /files/ (creation, creation-with-upload,
// creation-defer-length, termination: what @tus/s3-store offers) and GET /health (200, no
// token: the balancer's check). Gives receipts (RFC 9530, cambackup's
// `free_space_verify = "receipt"`): when an upload finishes, the object is streamed back from
// S3 and its SHA-256 kept beside it as the object `ID.sha256` (base64), which every instance
// reads; a HEAD whose `Want-Repr-Digest` names sha-256 is answered `Repr-Digest:
// sha-256=:BASE64:` once that digest exists (computed from the stored bytes, never from the
// bytes as they arrived). Logs one JSON line per request on stdout:
//   {"t": ms, "inst": "tus1", "method", "url", "status", "ms": duration, "offset": Upload-Offset
//    answered or null, "aborted": true if the client went away first}
//
// Environment:
//   CLOUD_TOKENS   required: the bearer tokens accepted, comma-separated. Every request but
//                  /health needs `Authorization: Bearer TOKEN` (the daemon sends it on every
//                  request, OPTIONS too), else 401.
//   TUS_PORT, TUS_NAME (in the log and the X-Tus-Instance response header)
//   REDIS_URL      redis://127.0.0.1:PORT
//   S3_ENDPOINT, S3_BUCKET, S3_ACCESS_KEY, S3_SECRET_KEY, S3_REGION
//   LOCK_LEASE_MS  the lock's lease (4000; lib/redis-locker.mjs says why short)
//   LOCK_TIMEOUT_MS how long a request waits for a lock before a 500 (20000)
//   CLOUD_LOCK     "redis" (default) or "memory": @tus/server's per-process MemoryLocker, which
//                  is wrong with several instances; only to show what the shared lock prevents
//   CLOUD_CACHE    "redis" (default) or "memory": per-process upload-info cache, likewise
import { createHash, timingSafeEqual } from "node:crypto";
import { createServer } from "node:http";
import { S3Store } from "@tus/s3-store";
import { ERRORS, EVENTS, MemoryLocker, RedisKvStore, Server } from "@tus/server";
import { createClient } from "redis";
import { RedisLocker } from "./lib/redis-locker.mjs";
import { s3Config } from "./lib/s3.mjs";

// The privacy promise (docs/INTERFACE.md): a camera sends these four metadata keys and no
// other. The tier refuses anything else, so a client that leaks (a file name, a GPS position)
// is caught at the door instead of stored.
const ALLOWED_METADATA = new Set(["user_id", "device_type", "serial_number", "storage_path"]);

const env = process.env;
const name = env.TUS_NAME ?? "tus";
const port = Number(env.TUS_PORT);
const tokens = (env.CLOUD_TOKENS ?? "")
  .split(",")
  .map((t) => t.trim())
  .filter((t) => t.length > 0);
if (!Number.isInteger(port) || port <= 0) fail("TUS_PORT must be a port number");
if (tokens.length === 0) fail("CLOUD_TOKENS must list at least one bearer token");
if (!env.REDIS_URL) fail("REDIS_URL is not set");

function fail(message) {
  console.error(`server.mjs: ${message}`);
  process.exit(2);
}

// Compared as SHA-256 digests in constant time: the time a wrong token takes says nothing
// about how close it was.
const digest = (s) => createHash("sha256").update(s).digest();
const tokenDigests = tokens.map(digest);
function authorized(header) {
  if (typeof header !== "string" || !header.startsWith("Bearer ")) return false;
  const d = digest(header.slice("Bearer ".length));
  let ok = false;
  for (const t of tokenDigests) ok = timingSafeEqual(d, t) || ok;
  return ok;
}

/**
 * @tus/s3-store with one correction: when an upload's multipart upload is gone (S3 answers
 * NoSuchUpload), the store takes it as completed and reports offset = size, since a completed
 * multipart upload is gone too. But a store also loses unfinished multipart uploads (expiry,
 * a lifecycle rule, an operator): then a client would be told its upload is complete while
 * the object does not exist. Here the complete answer stands only if the object does; else
 * 410 Gone, so the client creates the upload again.
 */
class CheckedS3Store extends S3Store {
  async getUpload(id) {
    const upload = await super.getUpload(id);
    if (upload.size !== undefined && upload.offset === upload.size) {
      try {
        await this.client.headObject({ Bucket: this.bucket, Key: id });
      } catch (e) {
        if (e?.name === "NotFound" || e?.name === "NoSuchKey") {
          await this.clearCache(id);
          throw ERRORS.FILE_NO_LONGER_EXISTS;
        }
        throw e;
      }
    }
    return upload;
  }

  /**
   * @tus/s3-store 2.0.7 declares a deferred length by changing the metadata it read from the
   * cache and writing `ID.info`, but never the cache: with the shared cache every instance
   * (this one too, at its next read) keeps the length undeclared, and the upload never
   * completes. The entry is dropped here, so the next read, on any instance, takes `ID.info`.
   * (`.ci/cloud.sh` sends such an upload across two instances.)
   */
  async declareUploadLength(id, length) {
    await super.declareUploadLength(id, length);
    await this.clearCache(id);
  }
}

const redis = createClient({
  url: env.REDIS_URL,
  // Back within a second of a Redis restart; meanwhile requests needing Redis fail (500) or
  // wait, and the client retries them.
  socket: { reconnectStrategy: (retries) => Math.min(50 * (retries + 1), 500) },
});
let redisDown = false;
redis.on("error", (e) => {
  if (!redisDown) console.error(`${name}: redis: ${e.message}`);
  redisDown = true;
});
redis.on("ready", () => {
  redisDown = false;
});
await redis.connect();

const { bucket, ...s3 } = s3Config();
const cache =
  env.CLOUD_CACHE === "memory" ? undefined : new RedisKvStore(redis, "tus:upload:");
let locker;
if (env.CLOUD_LOCK === "memory") {
  locker = new MemoryLocker();
} else {
  locker = await new RedisLocker({
    redis,
    owner: name,
    leaseMs: env.LOCK_LEASE_MS ? Number(env.LOCK_LEASE_MS) : undefined,
    acquireTimeoutMs: env.LOCK_TIMEOUT_MS ? Number(env.LOCK_TIMEOUT_MS) : undefined,
  }).start();
}

const datastore = new CheckedS3Store({
  s3ClientConfig: { bucket, ...s3 },
  cache,
  // Swift's s3api has no object tagging; tags only serve expiration, which is off here.
  useTags: false,
});

// Receipts. The digest is of the object as S3 stores it, read back after the upload finished:
// a store that lost or changed a part gives another digest than the camera's, which then keeps
// its file. Kept as a small object beside the upload's (`ID.sha256`), so any instance answers
// it, and a Redis restart loses nothing. Computed after the final PATCH is answered, never
// before (a large video read back would hold that answer past the client's stall timeout); a
// HEAD that comes first gets no receipt yet (the camera asks again at its next pass) and
// starts the computation if none runs here.
const DIGEST_SUFFIX = ".sha256";
const computing = new Map();

// `ID.sha256` holds the digest with the object's ETag and length when it was read: a receipt
// is answered only while the object still has both, so an object truncated or rewritten after
// its upload finished (a store's fault, an operator) gives no receipt until it is hashed anew,
// never the old digest of bytes no longer there.
async function storedDigest(id) {
  let stored;
  try {
    const { Body } = await datastore.client.getObject({ Bucket: bucket, Key: id + DIGEST_SUFFIX });
    stored = JSON.parse(await Body.transformToString());
  } catch (e) {
    if (e?.name === "NoSuchKey" || e?.name === "NotFound" || e instanceof SyntaxError) return undefined;
    throw e;
  }
  if (!/^[A-Za-z0-9+/]{43}=$/.test(stored?.sha256 ?? "")) return undefined;
  const now = await datastore.client.headObject({ Bucket: bucket, Key: id });
  if (now.ETag !== stored.etag || Number(now.ContentLength) !== stored.length) {
    computeDigest(id);
    return undefined;
  }
  return stored.sha256;
}

function computeDigest(id) {
  if (computing.has(id)) return computing.get(id);
  const job = (async () => {
    const { Body, ETag, ContentLength } = await datastore.client.getObject({ Bucket: bucket, Key: id });
    const h = createHash("sha256");
    for await (const chunk of Body) h.update(chunk);
    const b64 = h.digest("base64");
    await datastore.client.putObject({
      Bucket: bucket,
      Key: id + DIGEST_SUFFIX,
      Body: JSON.stringify({ sha256: b64, etag: ETag, length: Number(ContentLength) }),
      ContentType: "application/json",
    });
    return b64;
  })()
    .catch((e) => {
      // No receipt for now: the camera keeps the file and asks again later.
      console.error(`${name}: receipt of ${id}: ${e?.name ?? ""} ${e?.message ?? e}`);
      return undefined;
    })
    .finally(() => computing.delete(id));
  computing.set(id, job);
  return job;
}

/** The upload ID of a `/files/ID` URL, or undefined. */
function uploadId(url) {
  const m = /^\/files\/([^/?#.]+)(?:[?#].*)?$/.exec(url ?? "");
  return m ? m[1] : undefined;
}

/** Whether a `Want-Repr-Digest` (an RFC 8941 dictionary) asks for sha-256 with a weight > 0. */
function wantsSha256(header) {
  if (typeof header !== "string") return false;
  return header.split(",").some((m) => {
    const [k, v] = m.trim().split("=");
    return k === "sha-256" && Number(v ?? "1") > 0;
  });
}

/**
 * Sets `Repr-Digest` on the answer to a HEAD asking for it, where the digest of the finished
 * upload is known; starts computing it where the upload is complete but it is not (a
 * computation lost to a crash). Never fails the HEAD: without it, there is no receipt.
 */
async function receipt(req, res) {
  const id = uploadId(req.url);
  if (!id || !wantsSha256(req.headers["want-repr-digest"])) return;
  try {
    const d = await storedDigest(id);
    if (d) {
      res.setHeader("Repr-Digest", `sha-256=:${d}:`);
      return;
    }
    const upload = await datastore.getUpload(id);
    if (upload.size !== undefined && upload.offset === upload.size) computeDigest(id);
  } catch (e) {
    if (e?.status_code === undefined) console.error(`${name}: receipt of ${id}: ${e?.message ?? e}`);
  }
}

const tus = new Server({
  path: "/files",
  datastore,
  locker,
  // The balancer sets X-Forwarded-Proto/Host: the Location of a new upload must name the
  // balancer's address and scheme (https when it terminates TLS), not this instance's.
  respectForwardedHeaders: true,
  async onUploadCreate(_req, upload) {
    const extra = Object.keys(upload.metadata ?? {}).filter((k) => !ALLOWED_METADATA.has(k));
    if (extra.length > 0) {
      throw {
        status_code: 400,
        body:
          `Upload-Metadata: key ${extra.map((k) => JSON.stringify(k)).join(", ")} refused: ` +
          `this tier accepts only ${[...ALLOWED_METADATA].join(", ")}\n`,
      };
    }
    return {};
  },
});
tus.on(EVENTS.POST_FINISH, (_req, _res, upload) => {
  computeDigest(upload.id);
});

const http = createServer((req, res) => {
  const start = Date.now();
  res.on("close", () => {
    const offset = res.getHeader("upload-offset");
    const line = {
      t: start,
      inst: name,
      method: req.method,
      url: req.url,
      status: res.statusCode,
      ms: Date.now() - start,
      offset: offset === undefined ? null : Number(offset),
      aborted: !res.writableFinished,
    };
    process.stdout.write(`${JSON.stringify(line)}\n`);
  });
  res.setHeader("X-Tus-Instance", name);
  if (req.url === "/health") {
    res.writeHead(200, { "Content-Type": "text/plain" }).end("ok\n");
    return;
  }
  if (!authorized(req.headers.authorization)) {
    res
      .writeHead(401, {
        "Content-Type": "text/plain",
        "Tus-Resumable": "1.0.0",
        "WWW-Authenticate": 'Bearer realm="tus"',
      })
      .end("Authorization: a bearer token this tier accepts (CLOUD_TOKENS) is required\n");
    return;
  }
  if (req.method === "HEAD") {
    receipt(req, res).then(() => tus.handle(req, res));
    return;
  }
  tus.handle(req, res);
});
http.listen(port, "127.0.0.1", () => {
  console.error(`${name}: listening on 127.0.0.1:${port}`);
});

for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    http.close();
    process.exit(0);
  });
}
