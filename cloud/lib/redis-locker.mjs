// A @tus/server Locker shared by every tus instance through Redis: the smallest one we could
// make correct. @tus/server ships only a MemoryLocker (one process); with several instances
// behind a balancer, two requests for one upload can land on two instances, and without a
// shared lock both write parts at the same offset (tus/tusd#290: "the client may be able to
// corrupt an upload").
//
// The lock is a Redis key `PREFIX + upload id` holding a random token, set only if absent
// (SET NX) and with a short lifetime (PX lease). Why each part:
//
// - A short lease, renewed while the request lives. A holder that dies (kill -9, a crash, a
//   machine gone) cannot release its lock; the lease is what frees it, so the lease is how long
//   every other request for that upload waits after such a death. A 30 s lifetime made the
//   daemon's resume wait 30 s (issue 27); a 4 s lease renewed every second frees a dead
//   holder's lock within 4 s while a live request keeps it for as long as it runs.
// - A token, and release and renewal by a Lua script that checks it (atomic in Redis). A holder
//   that stalled longer than its lease (a paused process, Redis unreachable) has lost the lock
//   and someone else may hold it now: a plain DEL or PEXPIRE would delete or extend the new
//   holder's lock. The script acts only if the key still holds our token.
// - A lost lease ends the request. If a renewal finds the key gone or someone else's (or
//   cannot reach Redis: after a Redis restart the key is gone for sure), the holder no longer
//   excludes anyone, so it asks its own request to stop (the request-release callback @tus/server
//   gave us: it aborts the PATCH's body stream; the upload keeps the parts already stored and
//   the client resumes from the offset HEAD reports). Writing on without the lock is how an
//   upload gets corrupted.
// - The request-release callback across instances. @tus/server's protocol: a request that
//   wants a held lock calls the holder's release callback, and the holder (typically a PATCH
//   whose client went away, or which a newer HEAD from the same client supersedes) stops early
//   instead of keeping the lock until its body ends. Across instances that call goes through
//   Redis pub/sub: the waiter publishes the upload id on CHANNEL, every instance listens, and
//   the one holding that id calls its request's callback. Published again every second while
//   waiting, since a message sent just before the holder registered is lost.
// - Waiting by polling (every RETRY ms) rather than by a notification on release: a
//   notification can be lost too (pub/sub is fire-and-forget), polling cannot, and a lock is
//   free again at most RETRY ms before someone takes it.
//
// What this does not give: fencing. A holder whose process stalls for longer than its lease
// (3 s without a renewal: an overloaded host, a debugger) can, on waking, finish one S3 request
// it had started before it learns that the lock is gone. A lease without a fencing token has
// that limit everywhere, and S3 offers no conditional part write to fence with; the answer is
// to size the instances so that a Node process never stalls for seconds (README.md).
import { randomBytes } from "node:crypto";
import { ERRORS } from "@tus/server";

const RENEW = `
if redis.call("GET", KEYS[1]) == ARGV[1] then
  return redis.call("PEXPIRE", KEYS[1], ARGV[2])
end
return 0`;

const RELEASE = `
if redis.call("GET", KEYS[1]) == ARGV[1] then
  return redis.call("DEL", KEYS[1])
end
return 0`;

/**
 * @typedef {object} RedisLockerOptions
 * @property {import("redis").RedisClientType} redis  a connected client (node-redis 5)
 * @property {string} [prefix]            key prefix of the locks ("tus:lock:")
 * @property {string} [channel]           pub/sub channel of release requests ("tus:lock:release")
 * @property {number} [leaseMs]           lifetime of a lock not renewed (4000)
 * @property {number} [renewMs]           renewal period (leaseMs / 4)
 * @property {number} [acquireTimeoutMs]  how long lock() waits before ERR_LOCK_TIMEOUT (20000)
 * @property {number} [retryMs]           polling period while waiting (50)
 * @property {string} [owner]             put first in each token ("owner:random"), so that an
 *                                        operator (or a test) sees which instance holds a lock
 */

export class RedisLocker {
  /** @param {RedisLockerOptions} options */
  constructor(options) {
    this.redis = options.redis;
    this.prefix = options.prefix ?? "tus:lock:";
    this.channel = options.channel ?? "tus:lock:release";
    this.leaseMs = options.leaseMs ?? 4000;
    this.renewMs = options.renewMs ?? Math.max(1, Math.floor(this.leaseMs / 4));
    this.acquireTimeoutMs = options.acquireTimeoutMs ?? 20000;
    this.retryMs = options.retryMs ?? 50;
    this.owner = options.owner ?? "";
    /** upload id -> the release callback of the request holding its lock in this process */
    this.held = new Map();
    this.subscriber = null;
  }

  /** Starts listening for release requests (a second connection: a subscribed one can do
   * nothing else). node-redis subscribes again by itself after a reconnection. */
  async start() {
    this.subscriber = this.redis.duplicate();
    this.subscriber.on("error", () => {}); // reconnects on its own; lock() reports failures
    await this.subscriber.connect();
    await this.subscriber.subscribe(this.channel, (id) => {
      const release = this.held.get(id);
      if (release) Promise.resolve(release()).catch(() => {});
    });
    return this;
  }

  async stop() {
    if (this.subscriber) await this.subscriber.close().catch(() => {});
    this.subscriber = null;
  }

  newLock(id) {
    return new RedisLock(this, id);
  }
}

class RedisLock {
  constructor(locker, id) {
    this.locker = locker;
    this.id = id;
    this.key = locker.prefix + id;
    this.token = null;
    this.timer = null;
    this.release = null;
    this.lost = false;
  }

  /**
   * @param {AbortSignal} signal  the request's: aborted when the request ends while waiting
   * @param {() => (void | Promise<void>)} requestRelease  asks this request to end early
   */
  async lock(signal, requestRelease) {
    const l = this.locker;
    const token = `${l.owner}:${randomBytes(16).toString("hex")}`;
    const deadline = Date.now() + l.acquireTimeoutMs;
    let asked = 0;
    for (;;) {
      if (signal?.aborted) throw ERRORS.ERR_LOCK_TIMEOUT;
      const ok = await l.redis.set(this.key, token, {
        condition: "NX",
        expiration: { type: "PX", value: l.leaseMs },
      });
      if (ok === "OK") break;
      const now = Date.now();
      if (now >= deadline) throw ERRORS.ERR_LOCK_TIMEOUT;
      if (now - asked >= 1000) {
        asked = now;
        await l.redis.publish(l.channel, this.id);
      }
      await sleep(Math.min(l.retryMs, deadline - now), signal);
    }
    this.token = token;
    this.release = requestRelease;
    l.held.set(this.id, requestRelease);
    this.timer = setInterval(() => this.renew(requestRelease), l.renewMs);
    this.timer.unref();
  }

  async renew(requestRelease) {
    if (this.token === null) return;
    let renewed = 0;
    try {
      renewed = await this.locker.redis.eval(RENEW, {
        keys: [this.key],
        arguments: [this.token, String(this.locker.leaseMs)],
      });
    } catch {
      renewed = 0; // Redis unreachable: the lease cannot be kept, treat it as lost
    }
    if (renewed === 1 || this.token === null || this.lost) return;
    this.lost = true;
    this.stopRenewing();
    await Promise.resolve(requestRelease()).catch(() => {});
  }

  stopRenewing() {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    if (this.locker.held.get(this.id) === this.release) this.locker.held.delete(this.id);
  }

  async unlock() {
    if (this.token === null) throw new Error("Releasing an unlocked lock!");
    const token = this.token;
    this.stopRenewing();
    this.token = null;
    // A lost lease is not an error here: the script leaves another holder's lock alone.
    await this.locker.redis.eval(RELEASE, { keys: [this.key], arguments: [token] });
  }
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}
