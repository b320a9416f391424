// The lab's S3 client (the same AWS SDK @tus/s3-store uses), for what `cloud/lab` does with
// the object store besides serving uploads:
//
//   node s3.mjs mkbucket           create S3_BUCKET (retried while Swift is still starting)
//   node s3.mjs get KEY [FILE]     an object's bytes, to FILE or stdout
//   node s3.mjs ls                 the bucket's keys with sizes, one "KEY SIZE" a line
//   node s3.mjs multiparts         the multipart uploads in progress, one "KEY UPLOAD_ID" a line
//   node s3.mjs lose ID            abort upload ID's multipart upload: its parts are gone, as
//                                  when a store expires unfinished uploads (tus-node-server #127)
//
// Configuration from the environment: S3_ENDPOINT, S3_BUCKET, S3_ACCESS_KEY, S3_SECRET_KEY,
// S3_REGION (all in `cloud/lab env`).
import { createWriteStream } from "node:fs";
import { pipeline } from "node:stream/promises";
import { S3 } from "@aws-sdk/client-s3";

export function s3Config(env = process.env) {
  for (const name of ["S3_ENDPOINT", "S3_BUCKET", "S3_ACCESS_KEY", "S3_SECRET_KEY"]) {
    if (!env[name]) throw new Error(`${name} is not set (see cloud/lab env)`);
  }
  return {
    bucket: env.S3_BUCKET,
    endpoint: env.S3_ENDPOINT,
    region: env.S3_REGION ?? "us-east-1",
    // Swift's s3api answers path-style requests (no bucket-name DNS on loopback).
    forcePathStyle: true,
    credentials: { accessKeyId: env.S3_ACCESS_KEY, secretAccessKey: env.S3_SECRET_KEY },
    // The SDK's default since 3.729 adds CRC32 checksums sent as aws-chunked bodies, which
    // Swift 2.30's s3api refuses ("aws-chunked is not supported"); only where S3 requires one.
    requestChecksumCalculation: "WHEN_REQUIRED",
    responseChecksumValidation: "WHEN_REQUIRED",
  };
}

async function main() {
  const [cmd, ...args] = process.argv.slice(2);
  const { bucket, ...config } = s3Config();
  const s3 = new S3(config);
  switch (cmd) {
    case "mkbucket": {
      const deadline = Date.now() + 30000;
      for (;;) {
        try {
          await s3.createBucket({ Bucket: bucket });
          return;
        } catch (e) {
          const code = e?.name ?? e?.Code;
          if (code === "BucketAlreadyOwnedByYou" || code === "BucketAlreadyExists") return;
          if (Date.now() > deadline) throw e;
          await new Promise((r) => setTimeout(r, 200));
        }
      }
    }
    case "get": {
      if (!args[0]) throw new Error("usage: s3.mjs get KEY [FILE]");
      const { Body } = await s3.getObject({ Bucket: bucket, Key: args[0] });
      await pipeline(Body, args[1] ? createWriteStream(args[1]) : process.stdout);
      return;
    }
    case "ls": {
      let ContinuationToken;
      do {
        const r = await s3.listObjectsV2({ Bucket: bucket, ContinuationToken });
        for (const o of r.Contents ?? []) process.stdout.write(`${o.Key} ${o.Size}\n`);
        ContinuationToken = r.IsTruncated ? r.NextContinuationToken : undefined;
      } while (ContinuationToken);
      return;
    }
    case "multiparts": {
      const r = await s3.listMultipartUploads({ Bucket: bucket });
      for (const u of r.Uploads ?? []) process.stdout.write(`${u.Key} ${u.UploadId}\n`);
      return;
    }
    case "lose": {
      if (!args[0]) throw new Error("usage: s3.mjs lose UPLOAD_ID");
      const r = await s3.listMultipartUploads({ Bucket: bucket, Prefix: args[0] });
      const mine = (r.Uploads ?? []).filter((u) => u.Key === args[0]);
      if (mine.length === 0) throw new Error(`no multipart upload in progress for ${args[0]}`);
      for (const u of mine) {
        await s3.abortMultipartUpload({ Bucket: bucket, Key: u.Key, UploadId: u.UploadId });
      }
      // The incomplete tail (@tus/s3-store keeps a last part under 5 MiB as ID.part) too.
      await s3.deleteObject({ Bucket: bucket, Key: `${args[0]}.part` }).catch(() => {});
      return;
    }
    default:
      throw new Error("usage: s3.mjs mkbucket | get KEY [FILE] | ls | multiparts | lose ID");
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  main().catch((e) => {
    console.error(`s3.mjs: ${e?.name ?? "error"}: ${e?.message ?? e}`);
    process.exit(1);
  });
}
