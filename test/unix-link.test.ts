/**
 * libfractos/unix-link.ts: the Process's unix socket owned by the queue addon
 * (native/queue/src/sock.cc). Against a raw server (a paused net.Socket whose fd the test
 * drives with the addon's sendFds/recvFds): frames split in C++ reach `onFrame` whole and in
 * order, fds reach the frame they came with, fds the handler did not take are closed,
 * `sendWithFds` reaches the other side, a bad frame closes the link with EPROTO, the peer's
 * close is a clean `onClose()`. Skipped with the reason when the addon is not built.
 */
import test from 'ava';
import net from 'node:net';
import { join } from 'node:path';
import { UnixLink } from '../libfractos/unix-link.js';
import { FractosError } from '../libfractos/errors.js';
import { closeFd, loadQueue, recvFds, sendFds, socketPair } from '../native/queue/index.js';
import { tempDir } from './helpers/spawn.js';

let why = '';
try {
  loadQueue();
} catch (e) {
  why = (e as Error).message;
}
const t0 = why ? test.skip : test.serial;
if (why) test('unix-link: queue addon unavailable', (t) => t.pass(why));

function frame(op: number, seq: number, body: Buffer = Buffer.alloc(0)): Buffer {
  const f = Buffer.alloc(16 + body.length);
  f.writeUInt32LE(f.length, 0);
  f.writeUInt16LE(op, 4);
  f.writeUInt32LE(seq, 8);
  body.copy(f, 16);
  return f;
}

/** A listening server; resolves the accepted socket (paused: the test reads its fd itself). */
async function serve(): Promise<{ path: string; accepted: Promise<net.Socket>; close: () => void }> {
  const path = join(tempDir(), 's.sock');
  let res!: (s: net.Socket) => void;
  const accepted = new Promise<net.Socket>((r) => (res = r));
  const srv = net.createServer({ pauseOnConnect: true }, (s) => res(s));
  await new Promise<void>((r) => srv.listen(path, r));
  return { path, accepted, close: () => srv.close() };
}

function fdOf(s: net.Socket): number {
  return (s as unknown as { _handle: { fd: number } })._handle.fd;
}

/** Resolves true when the socket's other end is closed (EOF) within 3 s. */
function endsSoon(fd: number): Promise<boolean> {
  const s = new net.Socket({ fd, readable: true, writable: false });
  return new Promise((r) => {
    const timer = setTimeout(() => {
      s.destroy();
      r(false);
    }, 3000);
    s.on('data', () => {});
    s.on('end', () => {
      clearTimeout(timer);
      s.destroy();
      r(true);
    });
    s.on('error', () => {});
  });
}

t0('frames arrive whole and in order, each with its own fds; fds not taken are closed', async (t) => {
  const srv = await serve();
  const link = await UnixLink.connect(srv.path, 1 << 24, 2000);
  const sock = await srv.accepted;
  const fd = fdOf(sock);
  const got: { op: number; seq: number; len: number; fds: number }[] = [];
  let kept = -1;
  link.onFrame = (f, fds) => {
    got.push({ op: f.readUInt16LE(4), seq: f.readUInt32LE(8), len: f.length, fds: fds?.length ?? 0 });
    if (f.readUInt32LE(8) === 3 && fds) {
      kept = fds[0]!; // taken: the link must not close it
      fds[0] = -1;
    }
  };
  const [a1, a2] = socketPair();
  const [b1, b2] = socketPair();
  sendFds(fd, [a2], frame(0x7f, 1, Buffer.alloc(100, 1)));
  sock.write(frame(0x7f, 2, Buffer.alloc(1 << 20, 2))); // 1 MiB: split by the addon
  await new Promise((r) => setTimeout(r, 50));
  sendFds(fd, [b2], frame(0x7f, 3));
  closeFd(a2);
  closeFd(b2);
  const aEnded = endsSoon(a1); // not taken by the handler: closed by the link
  await new Promise((r) => setTimeout(r, 300));
  t.deepEqual(got, [
    { op: 0x7f, seq: 1, len: 116, fds: 1 },
    { op: 0x7f, seq: 2, len: 16 + (1 << 20), fds: 0 },
    { op: 0x7f, seq: 3, len: 16, fds: 1 },
  ]);
  t.true(await aEnded);
  t.true(kept >= 0);
  const bEnded = endsSoon(b1);
  closeFd(kept); // the last copy of b2
  t.true(await bEnded);

  // client -> server: one frame with an fd, after a plain one
  const [c1, c2] = socketPair();
  link.sendWithFds(frame(0x02, 10), [c2]);
  link.send(frame(0x02, 9));
  closeFd(c2); // the caller keeps its fds: closing ours is fine once sendWithFds returned
  await new Promise((r) => setTimeout(r, 100));
  const m1 = recvFds(fd, 1, 64);
  t.truthy(m1);
  t.is(m1!.data.length, 16); // the message with the fd held that frame and no byte of the next
  t.is(m1!.data.readUInt32LE(8), 10);
  closeFd(m1!.fds[0]!);
  closeFd(c1); // (a1 and b1 were closed by endsSoon's sockets)
  const closed: { err?: Error; called: boolean } = { called: false };
  link.onClose = (e) => Object.assign(closed, { err: e, called: true });
  sock.destroy();
  await new Promise((r) => setTimeout(r, 200));
  t.true(closed.called);
  t.is(closed.err, undefined); // a clean close, as Link reports it
  t.true(link.closed);
  await link.released();
  srv.close();
});

t0('a bad frame length closes the link with EPROTO; close() releases the socket', async (t) => {
  const srv = await serve();
  const link = await UnixLink.connect(srv.path, 1 << 24, 2000);
  const sock = await srv.accepted;
  let err: Error | undefined;
  link.onClose = (e) => (err = e);
  const bad = frame(0x7f, 1);
  bad.writeUInt32LE(8, 0);
  sock.write(bad);
  await new Promise((r) => setTimeout(r, 200));
  t.true(err instanceof FractosError);
  t.is((err as FractosError).code, 'EPROTO');
  await link.released();

  const link2 = await UnixLink.connect(srv.path, 1 << 24, 2000);
  await srv.accepted;
  link2.close();
  t.true(link2.closed);
  await link2.released();
  srv.close();
});

t0('connect to a missing socket is EDISCONNECTED', async (t) => {
  const e = await t.throwsAsync(UnixLink.connect(join(tempDir(), 'none.sock'), 1 << 24, 500));
  t.is((e as FractosError).code, 'EDISCONNECTED');
});
