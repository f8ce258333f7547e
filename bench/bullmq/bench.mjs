#!/usr/bin/env node
// BullMQ side of the DUCKS side-by-side queue benchmark.
//
//   REDIS_URL=redis://127.0.0.1:PORT/ node bench/bullmq/bench.mjs <scenario> [args]
//
//   drain   --jobs N --concurrency C --payload-bytes B
//   submit  --jobs N --payload-bytes B --batch K
//   latency --rate R --seconds S --payload-bytes B
//   memory  --jobs N --payload-bytes B
//
// Common: --timeout SECONDS (default 120): the whole run aborts after this.
//
// Every scenario FLUSHALLs the server given by REDIS_URL first, so REDIS_URL is
// required (no default: a default could wipe a shared server by accident).
// The LAST stdout line is always one JSON object: the result, or
// {"error": "...", ...} with exit code 1. Diagnostics go to stderr only.

import { performance } from 'node:perf_hooks';
import { Queue, Worker } from 'bullmq';
import IORedis from 'ioredis';

const BATCH_PRELOAD = 1000; // addBulk batch size for untimed preloads
const JOB_OPTS = { removeOnComplete: true, removeOnFail: true };

// ---------------------------------------------------------------- helpers

function log(...args) {
  console.error('[bullmq-bench]', ...args);
}

let finished = false;
let scenarioName = process.argv[2] ?? null;

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function fail(message, code = 1) {
  if (finished) return;
  finished = true;
  emit({ error: String(message), scenario: scenarioName });
  // Do not wait for connections: a failed run must never hang.
  process.exit(code);
}

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) throw new Error(`unexpected argument: ${a}`);
    let key = a.slice(2);
    let val;
    const eq = key.indexOf('=');
    if (eq >= 0) {
      val = key.slice(eq + 1);
      key = key.slice(0, eq);
    } else {
      val = argv[++i];
      if (val === undefined) throw new Error(`missing value for --${key}`);
    }
    out[key] = val;
  }
  return out;
}

function intArg(args, name, dflt) {
  const raw = args[name];
  if (raw === undefined) {
    if (dflt === undefined) throw new Error(`--${name} is required`);
    return dflt;
  }
  const v = Number(raw);
  if (!Number.isFinite(v) || v < 0 || !Number.isInteger(v)) {
    throw new Error(`--${name} must be a non-negative integer, got ${raw}`);
  }
  return v;
}

function numArg(args, name, dflt) {
  const raw = args[name];
  if (raw === undefined) {
    if (dflt === undefined) throw new Error(`--${name} is required`);
    return dflt;
  }
  const v = Number(raw);
  if (!Number.isFinite(v) || v <= 0) throw new Error(`--${name} must be a positive number, got ${raw}`);
  return v;
}

// A JSON-able object whose JSON.stringify is `bytes` long (or as close as
// possible when bytes is below the fixed overhead): {"prompt":"xxx..."}.
// `extra` fields (e.g. the latency timestamp) are counted in the budget.
function makePayload(bytes, extra = {}) {
  const base = { ...extra, prompt: '' };
  const overhead = Buffer.byteLength(JSON.stringify(base));
  base.prompt = 'x'.repeat(Math.max(0, bytes - overhead));
  return base;
}

function round(x, digits = 3) {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

function percentile(sorted, p) {
  if (sorted.length === 0) return null;
  // nearest-rank
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1];
}

function redisUrl() {
  const url = process.env.REDIS_URL;
  if (!url) throw new Error('REDIS_URL is not set (refusing to guess: every scenario runs FLUSHALL)');
  return url;
}

// All connections created here are tracked so that they can be closed.
const connections = [];
function connect(extra = {}) {
  const c = new IORedis(redisUrl(), {
    maxRetriesPerRequest: null, // required by BullMQ for Worker connections
    enableOfflineQueue: true,
    lazyConnect: false,
    ...extra,
  });
  c.on('error', (err) => log('redis connection error:', err.message));
  connections.push(c);
  return c;
}

async function closeAll(closables) {
  for (const c of closables) {
    try {
      await c.close();
    } catch (e) {
      log('close error:', e.message);
    }
  }
  for (const c of connections) {
    try {
      await c.quit();
    } catch {
      c.disconnect();
    }
  }
}

function queueName(scenario) {
  return `ducks-bench-${scenario}-${process.pid}-${Date.now().toString(36)}`;
}

// Plain connection for FLUSHALL / INFO. Unlike the BullMQ ones it gives up
// quickly, so an unreachable REDIS_URL is reported at once, not at the deadline.
async function adminConnection() {
  const admin = connect({
    maxRetriesPerRequest: 1,
    retryStrategy: (times) => (times > 5 ? null : 100 * times),
  });
  try {
    await admin.ping();
  } catch (e) {
    throw new Error(`cannot reach ${redisUrl()}: ${e.message}`);
  }
  return admin;
}

async function usedMemory(admin) {
  const info = await admin.info('memory');
  const m = /^used_memory:(\d+)\s*$/m.exec(info);
  if (!m) throw new Error('INFO memory has no used_memory field');
  return Number(m[1]);
}

async function preload(queue, n, payloadBytes) {
  const data = makePayload(payloadBytes);
  for (let done = 0; done < n; ) {
    const k = Math.min(BATCH_PRELOAD, n - done);
    const batch = new Array(k);
    for (let i = 0; i < k; i++) batch[i] = { name: 'job', data, opts: JOB_OPTS };
    await queue.addBulk(batch);
    done += k;
  }
}

// ---------------------------------------------------------------- scenarios

async function drain(args) {
  const jobs = intArg(args, 'jobs', 50000);
  const concurrency = intArg(args, 'concurrency', 10);
  const payloadBytes = intArg(args, 'payload-bytes', 300);
  if (jobs < 1 || concurrency < 1) throw new Error('--jobs and --concurrency must be >= 1');

  const admin = await adminConnection();
  await admin.flushall();
  const name = queueName('drain');
  const queue = new Queue(name, { connection: connect() });
  await queue.waitUntilReady();

  const t0pre = performance.now();
  await preload(queue, jobs, payloadBytes);
  const waiting = await queue.getWaitingCount();
  log(`preloaded ${jobs} jobs in ${round((performance.now() - t0pre) / 1000)} s; waiting=${waiting}`);
  if (waiting !== jobs) throw new Error(`expected ${jobs} waiting jobs after preload, found ${waiting}`);

  let completed = 0;
  let failed = 0;
  let start = 0;
  let resolveDone;
  const done = new Promise((r) => (resolveDone = r));

  const worker = new Worker(name, async () => {}, {
    connection: connect(),
    concurrency,
    autorun: false,
  });
  worker.on('completed', () => {
    if (++completed + failed === jobs) resolveDone(performance.now());
  });
  worker.on('failed', (_job, err) => {
    failed++;
    log('job failed:', err?.message);
    if (completed + failed === jobs) resolveDone(performance.now());
  });
  worker.on('error', (err) => log('worker error:', err.message));
  await worker.waitUntilReady();

  start = performance.now();
  const running = worker.run();
  running.catch((e) => fail(`worker.run: ${e.message}`));
  const end = await done;
  const seconds = (end - start) / 1000;

  await closeAll([worker, queue]);
  if (failed > 0) throw new Error(`${failed} of ${jobs} jobs failed`);
  return {
    scenario: 'drain',
    concurrency,
    jobs,
    seconds: round(seconds, 4),
    jobs_per_sec: round(jobs / seconds, 1),
  };
}

async function submit(args) {
  const jobs = intArg(args, 'jobs', 50000);
  const payloadBytes = intArg(args, 'payload-bytes', 300);
  const batch = intArg(args, 'batch', 1);
  if (jobs < 1 || batch < 1) throw new Error('--jobs and --batch must be >= 1');

  const admin = await adminConnection();
  await admin.flushall();
  const name = queueName('submit');
  const queue = new Queue(name, { connection: connect() });
  await queue.waitUntilReady();
  const data = makePayload(payloadBytes);

  const start = performance.now();
  if (batch === 1) {
    for (let i = 0; i < jobs; i++) await queue.add('job', data, JOB_OPTS);
  } else {
    for (let done = 0; done < jobs; ) {
      const k = Math.min(batch, jobs - done);
      const b = new Array(k);
      for (let i = 0; i < k; i++) b[i] = { name: 'job', data, opts: JOB_OPTS };
      await queue.addBulk(b);
      done += k;
    }
  }
  const seconds = (performance.now() - start) / 1000;

  const waiting = await queue.getWaitingCount();
  await closeAll([queue]);
  if (waiting !== jobs) throw new Error(`expected ${jobs} waiting jobs, found ${waiting}`);
  return {
    scenario: 'submit',
    batch,
    jobs,
    seconds: round(seconds, 4),
    jobs_per_sec: round(jobs / seconds, 1),
  };
}

async function latency(args) {
  const rate = numArg(args, 'rate', 1000);
  const secondsArg = numArg(args, 'seconds', 10);
  const payloadBytes = intArg(args, 'payload-bytes', 300);
  const concurrency = intArg(args, 'concurrency', 10);
  const total = Math.round(rate * secondsArg);
  if (total < 1) throw new Error('--rate * --seconds must be at least 1 job');
  const intervalMs = 1000 / rate;

  const admin = await adminConnection();
  await admin.flushall();
  const name = queueName('latency');
  const queue = new Queue(name, { connection: connect() });
  await queue.waitUntilReady();

  const samples = new Float64Array(total);
  let count = 0;
  let failed = 0;

  // Submit-to-dequeue latency: the processor runs this first thing.
  const worker = new Worker(
    name,
    async (job) => {
      const lat = performance.now() - job.data.t;
      if (count < total) samples[count] = lat;
      count++;
    },
    { connection: connect(), concurrency, autorun: false },
  );
  worker.on('completed', () => {});
  worker.on('failed', (_job, err) => {
    failed++;
    log('job failed:', err?.message);
  });
  worker.on('error', (err) => log('worker error:', err.message));
  await worker.waitUntilReady();
  worker.run().catch((e) => fail(`worker.run: ${e.message}`));
  // Let the worker reach its blocking wait before the clock starts.
  await new Promise((r) => setTimeout(r, 200));

  // Producer on an absolute schedule: job i is due at t0 + i * interval.
  // Adds are not awaited one by one, so one slow round trip does not delay
  // the next submissions (no coordinated omission); late wakeups catch up.
  const pending = [];
  let addErrors = 0;
  const t0 = performance.now();
  let next = 0;
  await new Promise((resolveProducer) => {
    const tick = () => {
      const now = performance.now();
      while (next < total && t0 + next * intervalMs <= now) {
        const data = makePayload(payloadBytes, { t: performance.now() });
        pending.push(
          queue.add('job', data, JOB_OPTS).catch((e) => {
            addErrors++;
            log('add failed:', e.message);
          }),
        );
        next++;
      }
      if (next >= total) return resolveProducer();
      const wait = Math.max(0, t0 + next * intervalMs - performance.now());
      setTimeout(tick, wait);
    };
    tick();
  });
  const producedIn = (performance.now() - t0) / 1000;
  await Promise.all(pending);
  log(`submitted ${total} jobs in ${round(producedIn)} s (target ${secondsArg} s)`);
  if (addErrors > 0) throw new Error(`${addErrors} adds failed`);

  // Wait for the worker to have started every job.
  await new Promise((resolve) => {
    const poll = () => (count + failed >= total ? resolve() : setTimeout(poll, 5));
    poll();
  });
  await closeAll([worker, queue]);

  const n = Math.min(count, total);
  const sorted = Array.from(samples.subarray(0, n)).sort((a, b) => a - b);
  return {
    scenario: 'latency',
    rate,
    p50_ms: round(percentile(sorted, 50), 3),
    p99_ms: round(percentile(sorted, 99), 3),
    max_ms: round(sorted[n - 1], 3),
    count: n,
  };
}

async function memory(args) {
  const jobs = intArg(args, 'jobs', 50000);
  const payloadBytes = intArg(args, 'payload-bytes', 300);
  if (jobs < 1) throw new Error('--jobs must be >= 1');

  const admin = await adminConnection();
  await admin.flushall();
  const name = queueName('memory');
  const queue = new Queue(name, { connection: connect() });
  await queue.waitUntilReady();

  const before = await usedMemory(admin);
  await preload(queue, jobs, payloadBytes);
  const after = await usedMemory(admin);
  const waiting = await queue.getWaitingCount();
  log(`used_memory before=${before} after=${after} waiting=${waiting}`);
  await closeAll([queue]);
  if (waiting !== jobs) throw new Error(`expected ${jobs} waiting jobs, found ${waiting}`);
  return {
    scenario: 'memory',
    jobs,
    bytes_per_job: round((after - before) / jobs, 1),
  };
}

const SCENARIOS = { drain, submit, latency, memory };

// ---------------------------------------------------------------- main

async function main() {
  const scenario = process.argv[2];
  const fn = SCENARIOS[scenario];
  if (!fn) {
    throw new Error(
      `usage: node bench.mjs <${Object.keys(SCENARIOS).join('|')}> [--jobs N] [--concurrency C] ` +
        '[--payload-bytes B] [--batch K] [--rate R] [--seconds S] [--timeout S]',
    );
  }
  const args = parseArgs(process.argv.slice(3));
  const timeoutS = numArg(args, 'timeout', 120);
  delete args.timeout;
  const deadline = setTimeout(() => fail(`timeout: not finished after ${timeoutS} s`), timeoutS * 1000);

  const known = {
    drain: ['jobs', 'concurrency', 'payload-bytes'],
    submit: ['jobs', 'payload-bytes', 'batch'],
    latency: ['rate', 'seconds', 'payload-bytes', 'concurrency'],
    memory: ['jobs', 'payload-bytes'],
  }[scenario];
  for (const k of Object.keys(args)) {
    if (!known.includes(k)) log(`warning: --${k} is ignored by scenario ${scenario}`);
  }

  const result = await fn(args);
  clearTimeout(deadline);
  finished = true;
  emit(result);
}

process.on('unhandledRejection', (e) => fail(`unhandled rejection: ${e?.message ?? e}`));
process.on('uncaughtException', (e) => fail(`uncaught exception: ${e?.message ?? e}`));

main().then(
  () => {
    // Everything is closed; exit explicitly so a stray handle cannot keep us alive.
    process.exit(0);
  },
  (e) => fail(e?.message ?? e),
);
