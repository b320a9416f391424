// lib/redis-locker.mjs against a real redis-server (started here on a Unix socket in a temp
// dir: no port to collide on). Two lockers with their own connections stand for two tus
// instances. Leases are short (400 ms) so that expiry shows within a second.
//
//   node --test cloud/test/
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { createClient } from "redis";
import { RedisLocker } from "../lib/redis-locker.mjs";

const LEASE = 400;
let dir;
let redisServer;
const clients = [];

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "redis-locker-test-"));
  redisServer = spawn(
    "redis-server",
    ["--port", "0", "--unixsocket", join(dir, "redis.sock"), "--save", "", "--appendonly", "no"],
    { stdio: "ignore" },
  );
  for (let i = 0; ; i++) {
    try {
      const c = await connect();
      await c.ping();
      return;
    } catch (e) {
      if (i > 100) throw e;
      await sleep(50);
    }
  }
});

after(async () => {
  for (const c of clients) await c.close().catch(() => {});
  redisServer?.kill("SIGKILL");
  rmSync(dir, { recursive: true, force: true });
});

async function connect() {
  const c = createClient({ socket: { path: join(dir, "redis.sock"), reconnectStrategy: false } });
  c.on("error", () => {});
  await c.connect();
  clients.push(c);
  return c;
}

/** A locker as one tus instance has it, with its own connection. */
async function instance(options = {}) {
  const redis = await connect();
  const locker = await new RedisLocker({ redis, leaseMs: LEASE, retryMs: 10, ...options }).start();
  return { redis, locker };
}

const never = new AbortController().signal;
let n = 0;
const uploadId = () => `upload-${process.pid}-${++n}`;

test("a lock held on one instance makes the other wait, and passes on at unlock", async () => {
  const a = await instance();
  const b = await instance();
  const id = uploadId();
  const lockA = a.locker.newLock(id);
  await lockA.lock(never, () => {});
  let bHas = false;
  const lockB = b.locker.newLock(id);
  const waiting = lockB.lock(never, () => {}).then(() => {
    bHas = true;
  });
  await sleep(3 * LEASE); // well past a lease: renewal keeps A's lock
  assert.equal(bHas, false, "B got the lock while A held it (A's renewal did not keep it)");
  const released = Date.now();
  await lockA.unlock();
  await waiting;
  assert.ok(Date.now() - released < 500, "B took more than 500 ms to see the lock free");
  await lockB.unlock();
});

test("a waiter asks the holder on the other instance to release (request-release callback)", async () => {
  const a = await instance();
  const b = await instance();
  const id = uploadId();
  const lockA = a.locker.newLock(id);
  let asked = 0;
  // The holder's request ends when asked, as @tus/server's context.cancel() ends a PATCH.
  await lockA.lock(never, async () => {
    asked++;
    await lockA.unlock();
  });
  const t0 = Date.now();
  await b.locker.newLock(id).lock(never, () => {});
  assert.equal(asked, 1, "A's release callback was not called exactly once");
  assert.ok(Date.now() - t0 < 1000, "the release request took more than a second");
});

test("a dead holder's lock frees within its lease", async () => {
  const a = await instance();
  const b = await instance();
  const id = uploadId();
  await a.locker.newLock(id).lock(never, () => {});
  // kill -9 of the instance: its connection drops, nothing renews, nothing releases.
  a.redis.destroy();
  a.locker.subscriber.destroy();
  const t0 = Date.now();
  await b.locker.newLock(id).lock(never, () => {});
  const waited = Date.now() - t0;
  assert.ok(waited <= LEASE + 300, `B waited ${waited} ms for a dead holder's ${LEASE} ms lease`);
});

test("a holder that lost its lease stops its request and cannot release the next holder's lock", async () => {
  const a = await instance();
  const b = await instance();
  const admin = await connect();
  const id = uploadId();
  const lockA = a.locker.newLock(id);
  let stopped = false;
  await lockA.lock(never, () => {
    stopped = true;
  });
  // A stalls past its lease (simulated: its key expires under it), and B takes the lock.
  await admin.del(`tus:lock:${id}`);
  const lockB = b.locker.newLock(id);
  await lockB.lock(never, () => {});
  const keyB = await admin.get(`tus:lock:${id}`);
  await sleep(LEASE / 2); // A's next renewal finds B's token
  assert.equal(stopped, true, "A went on without its lock: its request was not asked to stop");
  await lockA.unlock(); // the token check: this must not delete B's lock
  assert.equal(await admin.get(`tus:lock:${id}`), keyB, "A's late unlock removed B's lock");
  await lockB.unlock();
  assert.equal(await admin.get(`tus:lock:${id}`), null);
});

test("waiting ends with ERR_LOCK_TIMEOUT, or when the request goes away", async () => {
  const a = await instance();
  const b = await instance({ acquireTimeoutMs: 300 });
  const id = uploadId();
  const lockA = a.locker.newLock(id);
  await lockA.lock(never, () => {}); // a holder that does not release when asked
  const t0 = Date.now();
  await assert.rejects(b.locker.newLock(id).lock(never, () => {}), (e) => {
    assert.equal(e.status_code, 500);
    assert.match(e.body, /lock/);
    return true;
  });
  assert.ok(Date.now() - t0 < 1000);
  const gone = new AbortController();
  const c = await instance({ acquireTimeoutMs: 60000 });
  const waiting = c.locker.newLock(id).lock(gone.signal, () => {});
  setTimeout(() => gone.abort(), 100);
  await assert.rejects(waiting);
  await lockA.unlock();
});

test("unlock without a lock is an error, as MemoryLocker's", async () => {
  const a = await instance();
  await assert.rejects(a.locker.newLock(uploadId()).unlock(), /unlocked/);
});
