// The queue addon (native/queue/index.ts) across processes: a C echo peer (pingpong echo)
// in watch (eventfd + libuv) and polling modes, wrap-around, a full ring's back-pressure
// (no loss), a hostile Process writing garbage into its rings (the peer drops that channel
// only), a Process killed -9 while pushing, and files that are not sealed pairs refused.
import test from 'ava';
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, ftruncateSync, openSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { FractosError } from '../libfractos/errors.js';
import {
  QueueChannel, QueueSide, closeFd, createDoorbell, createQueuePair, mapQueuePairRaw, queueEntries, queueLayout,
  queueToolPath, sendFds, socketPair,
} from '../native/queue/index.js';
import { REPO_ROOT, removeTempDir, tempDir } from './helpers/spawn.js';

let reason = '';
try {
  queueLayout();
} catch (e) {
  reason = `queue addon unavailable: ${(e as Error).message}`;
}
const t0 = reason ? test.skip : test;

interface Pair {
  fd: number;
  efdP: number;
  efdC: number;
  close(): void;
}
function pair(ringBytes: number): Pair {
  const fd = createQueuePair(ringBytes);
  const efdP = createDoorbell();
  const efdC = createDoorbell();
  return { fd, efdP, efdC, close: () => [fd, efdP, efdC].forEach(closeFd) };
}

/** Start `pingpong echo` with one end of a socketpair as its fd 3 and hand it the pair. */
async function echoPeer(p: Pair): Promise<{ child: ChildProcess; exit: Promise<{ code: number | null; stderr: string }>; sock: number }> {
  const [mine, theirs] = socketPair();
  const child = spawn(queueToolPath('pingpong'), ['echo', '3'], { stdio: ['ignore', 'ignore', 'pipe', theirs] });
  closeFd(theirs);
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const exit = new Promise<{ code: number | null; stderr: string }>((r) => child.on('exit', (code) => r({ code, stderr })));
  sendFds(mine, [p.fd, p.efdP, p.efdC]);
  return { child, exit, sock: mine };
}

function entry(seq: number): Buffer {
  const n = 4 + ((seq * 7919) % 3000);
  const b = Buffer.alloc(n);
  b.writeUInt32LE(seq, 0);
  for (let i = 4; i < n; i++) b[i] = (seq + i) & 0xff;
  return b;
}

t0('round trip through a C echo peer: watch mode (eventfd + libuv), batches, wrap-around', async (t) => {
  const p = pair(16384);
  const peer = await echoPeer(p);
  const ch = new QueueChannel(p.fd, { side: QueueSide.PROCESS, ownDoorbell: p.efdP, peerDoorbell: p.efdC });
  const N = 3000; // ~4.5 MB through a 16 KiB ring: hundreds of wraps
  let sent = 0;
  let got = 0;
  let batches = 0;
  await new Promise<void>((resolve, reject) => {
    const pump = (): void => {
      while (sent < N && sent - got < 8 && ch.push(entry(sent))) sent++;
    };
    ch.watch((buf, bytes) => {
      if (bytes > 0) batches++;
      for (const e of queueEntries(buf, bytes)) {
        const want = entry(got);
        if (!want.equals(e)) return reject(new Error(`entry ${got} differs`));
        got++;
      }
      if (got === N) return resolve();
      pump();
      if (sent < N && sent - got < 8) ch.armSpace();
    }, reject);
    pump();
  });
  t.is(got, N);
  // the peer's head is the acknowledgement (it commits right after publishing the last echo)
  const until = Date.now() + 2000;
  while (ch.stats().txAcked < ch.stats().txTail && Date.now() < until) await new Promise((r) => setTimeout(r, 5));
  const st = ch.stats();
  t.is(st.error, 0);
  t.is(st.txAcked, st.txTail);
  t.true(st.txTail > 200 * 16384);
  t.log(`${N} entries in ${batches} batches`);
  ch.close();
  closeFd(peer.sock); // the socket closing is the Process's end
  t.is((await peer.exit).code, 0);
  p.close();
});

t0('round trip through a C echo peer: polling mode (wait + drain), 0/64/4096 bytes', async (t) => {
  const p = pair(65536);
  const peer = await echoPeer(p);
  const ch = new QueueChannel(p.fd, { side: QueueSide.PROCESS, ownDoorbell: p.efdP, peerDoorbell: p.efdC, spinNs: 20_000 });
  const out = Buffer.alloc(4 + ch.maxEntry);
  for (const size of [0, 64, 4096]) {
    const msg = Buffer.alloc(size, size & 0xff);
    for (let i = 0; i < 200; i++) {
      t.true(ch.push(msg));
      let n = 0;
      while (n === 0) {
        t.true(ch.wait(5000));
        n = ch.drain(out);
      }
      t.is(out.readUInt32LE(0), size);
      t.true(out.subarray(4, 4 + size).equals(msg));
    }
  }
  ch.close();
  closeFd(peer.sock);
  t.is((await peer.exit).code, 0);
  p.close();
});

t0('full ring: push answers false, nothing is lost, the producer is woken when space frees', async (t) => {
  const p = pair(4096);
  const proc = new QueueChannel(p.fd, { side: QueueSide.PROCESS, ownDoorbell: p.efdP, peerDoorbell: p.efdC });
  const ctl = new QueueChannel(p.fd, { side: QueueSide.CONTROLLER, ownDoorbell: p.efdC, peerDoorbell: p.efdP });
  const e = Buffer.alloc(56);
  let pushed = 0;
  while (proc.push(e.fill(pushed & 0xff))) pushed++;
  t.is(pushed, 4096 / 64);
  t.throws(() => proc.push(Buffer.alloc(proc.maxEntry + 1)), { instanceOf: FractosError, message: /ERANGE/ });
  // watch: the Controller's acknowledgement rings our doorbell (bytes = 0: space)
  const woken = new Promise<number>((r) => proc.watch((_b, bytes) => r(bytes), () => {}));
  t.false(proc.armSpace());
  const out = Buffer.alloc(64 * 1024);
  const n = ctl.drain(out);
  const seen = [...queueEntries(out, n)];
  t.is(seen.length, pushed);
  seen.forEach((x, i) => t.is(x[0], i & 0xff));
  t.is(await woken, 0);
  t.true(proc.push(e));
  proc.close();
  ctl.close();
  p.close();
});

t0('hostile Process: garbage in its request ring makes the peer drop that channel only', async (t) => {
  const bad = pair(4096);
  const good = pair(4096);
  const badPeer = await echoPeer(bad);
  const goodPeer = await echoPeer(good);
  const L = queueLayout();
  const ch = new QueueChannel(bad.fd, { side: QueueSide.PROCESS, ownDoorbell: bad.efdP, peerDoorbell: bad.efdC });
  const raw = new DataView(mapQueuePairRaw(bad.fd));
  // request ring: an entry claiming 1 GiB, then publish a tail covering 64 bytes and wake the peer
  raw.setUint32(L.headerBytes, 1 << 30, true);
  raw.setUint32(L.headerBytes + 4, L.kindData, true);
  raw.setBigUint64(L.ctlLine * 1, 64n, true);
  // (the peer re-checks its ring at least every 100 ms: no wake needed)
  const r = await badPeer.exit;
  t.is(r.code, 5);
  t.regex(r.stderr, /EPROTO/);
  // the other Process's channel still works
  const g = new QueueChannel(good.fd, { side: QueueSide.PROCESS, ownDoorbell: good.efdP, peerDoorbell: good.efdC });
  t.true(g.push(Buffer.from('still here')));
  t.true(g.wait(5000));
  const out = Buffer.alloc(4 + g.maxEntry);
  t.is(out.subarray(4, g.drain(out)).toString(), 'still here');
  // and a consumer in this process that reads a spoiled ring reports EPROTO (sticky), no crash
  const spoiled = pair(4096);
  const ctl = new QueueChannel(spoiled.fd, { side: QueueSide.CONTROLLER });
  const sraw = new DataView(mapQueuePairRaw(spoiled.fd));
  sraw.setBigUint64(L.ctlLine * 1, 12345n, true); // unaligned tail
  t.throws(() => ctl.drain(Buffer.alloc(4096)), { instanceOf: FractosError, message: /EPROTO/ });
  t.throws(() => ctl.drain(Buffer.alloc(4096)), { instanceOf: FractosError, message: /EPROTO/ });
  t.is(ctl.stats().error, -71);
  for (const c of [ch, g, ctl]) c.close();
  closeFd(badPeer.sock);
  closeFd(goodPeer.sock);
  t.is((await goodPeer.exit).code, 0);
  for (const x of [bad, good, spoiled]) x.close();
});

t0('watch mode: a peer that spoils the ring stops the watch with onError(EPROTO)', async (t) => {
  const p = pair(4096);
  const ctl = new QueueChannel(p.fd, { side: QueueSide.CONTROLLER, ownDoorbell: p.efdC, peerDoorbell: p.efdP });
  const proc = new QueueChannel(p.fd, { side: QueueSide.PROCESS, ownDoorbell: p.efdP, peerDoorbell: p.efdC });
  const seen: string[] = [];
  let first: () => void;
  const gotFirst = new Promise<void>((r) => (first = r));
  const failed = new Promise<FractosError>((resolve) => ctl.watch((buf, bytes) => {
    for (const e of queueEntries(buf, bytes)) seen.push(e.toString());
    if (seen.length) first();
  }, resolve));
  t.true(proc.push(Buffer.from('one')));
  await gotFirst;
  t.deepEqual(seen, ['one']);
  // the "Process" now writes a header with a bad kind and publishes it, then rings the doorbell
  const L = queueLayout();
  const raw = new DataView(mapQueuePairRaw(p.fd));
  const tail = Number(raw.getBigUint64(L.ctlLine, true));
  raw.setUint32(L.headerBytes + tail, 8, true);
  raw.setUint32(L.headerBytes + tail + 4, 9, true);
  raw.setBigUint64(L.ctlLine, BigInt(tail + 16), true);
  writeSync(p.efdC, Buffer.from([1, 0, 0, 0, 0, 0, 0, 0])); // ring the Controller's doorbell (eventfd += 1)
  const err = await failed;
  t.is(err.code, 'EPROTO');
  t.deepEqual(seen, ['one']);
  t.is(ctl.stats().error, -71);
  ctl.close();
  proc.close();
  p.close();
});

t0('a Process killed -9 while pushing: every visible entry is whole, nothing follows', async (t) => {
  const p = pair(65536);
  const [mine, theirs] = socketPair();
  const child = spawn(process.execPath, [join(REPO_ROOT, 'dist', 'test', 'fixtures', 'queue-child.js')], { stdio: ['ignore', 'pipe', 'inherit', theirs] });
  closeFd(theirs);
  sendFds(mine, [p.fd, p.efdP, p.efdC]);
  await new Promise<void>((r) => child.stdout!.once('data', () => r()));
  const ctl = new QueueChannel(p.fd, { side: QueueSide.CONTROLLER, ownDoorbell: p.efdC, peerDoorbell: p.efdP });
  const out = Buffer.alloc(256 * 1024);
  let seq = 0;
  // consume for a while, then kill it in the middle of its stream
  const until = Date.now() + 300;
  const hardStop = Date.now() + 20_000;
  while ((Date.now() < until || seq === 0) && Date.now() < hardStop) {
    if (!ctl.wait(100)) continue;
    for (const e of queueEntries(out, ctl.drain(out))) {
      t.is(e.readUInt32LE(0), seq);
      seq++;
    }
  }
  child.kill('SIGKILL');
  await new Promise((r) => child.once('exit', r));
  let n;
  while ((n = ctl.drain(out)) > 0) {
    for (const e of queueEntries(out, n)) {
      const want = Buffer.alloc(4 + (seq % 1000));
      want.writeUInt32LE(seq, 0);
      for (let i = 4; i < want.length; i++) want[i] = (seq + i) & 0xff;
      t.true(want.equals(e), `entry ${seq}`);
      seq++;
    }
  }
  t.is(ctl.stats().error, 0);
  t.true(seq > 0);
  t.log(`${seq} entries before the kill`);
  ctl.close();
  closeFd(mine);
  p.close();
});

t0('files that are not sealed pairs are refused before mapping (EPROTO)', (t) => {
  const dir = tempDir('fractos-queue-');
  const size = queueLayout().headerBytes + 2 * 4096;
  for (const path of [join(dir, 'plain.bin'), `/dev/shm/fractos-queue-test-${process.pid}`]) {
    const fd = openSync(path, 'w+');
    ftruncateSync(fd, size); // the right size, but no seals (tmpfs: F_SEAL_SEAL only; disk: no seals at all)
    t.throws(() => new QueueChannel(fd), { instanceOf: FractosError, message: /EPROTO/ }, path);
    t.throws(() => mapQueuePairRaw(fd), { instanceOf: FractosError, message: /EPROTO/ });
    closeSync(fd);
    rmSync(path, { force: true });
  }
  const p = pair(4096);
  t.throws(() => new QueueChannel(p.fd, { ringBytes: 8192 }), { instanceOf: FractosError, message: /EPROTO/ }); // not the size configured
  t.throws(() => createQueuePair(5000), { instanceOf: FractosError, message: /EINVAL/ });
  t.throws(() => new QueueChannel(p.fd, { maxEntry: 4096 }), { instanceOf: FractosError, message: /EINVAL/ });
  const ok = new QueueChannel(p.fd);
  ok.close();
  t.throws(() => ok.push(Buffer.alloc(1)), { instanceOf: FractosError, message: /EDISCONNECTED/ });
  // a side that finds invalid indices already at attach refuses it
  const sp = pair(4096);
  new DataView(mapQueuePairRaw(sp.fd)).setBigUint64(queueLayout().ctlLine * 3, 4097n, true);
  t.throws(() => new QueueChannel(sp.fd), { instanceOf: FractosError, message: /EPROTO/ });
  sp.close();
  p.close();
  removeTempDir(dir);
});
