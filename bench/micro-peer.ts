/**
 * Child processes of the microbenchmarks (each trial's far side runs in its own OS process):
 *   node dist/bench/micro-peer.js raw-echo unix:PATH|tcp://HOST:PORT   raw ping-pong / sink server
 *   node dist/bench/micro-peer.js provider ADDR NAME                   FractOS echo provider + holder
 * Each prints `ready` once serving.
 */
import net from 'node:net';
import { connect, Perm } from '../libfractos/index.js';
import { parseAddress } from '../libfractos/link.js';
import { BenchEcho, BenchHold } from './micro-schema.js';

/**
 * Raw server: a stream of frames with a 16-byte header (u32 length first, like FractOS
 * frames). A frame whose op (u16 at 4) is 1 is echoed back (ping-pong); any other frame is
 * consumed and answered by a 16-byte ack once complete (throughput). Payload bytes are
 * counted, never reassembled: the baseline is the transport, not this server's buffering.
 */
function rawEcho(addr: string): void {
  const a = parseAddress(addr);
  const ack = Buffer.alloc(16);
  ack.writeUInt32LE(16, 0);
  const server = net.createServer((s) => {
    s.setNoDelay?.(true);
    const head = Buffer.alloc(16);
    let headBytes = 0;
    let remaining = 0; // payload bytes of the current frame still to come
    let echo = false;
    s.on('data', (chunk: Buffer) => {
      let off = 0;
      while (off < chunk.length) {
        if (remaining > 0) {
          const n = Math.min(remaining, chunk.length - off);
          remaining -= n;
          off += n;
          if (remaining === 0) s.write(ack);
          continue;
        }
        const n = Math.min(16 - headBytes, chunk.length - off);
        chunk.copy(head, headBytes, off, off + n);
        headBytes += n;
        off += n;
        if (headBytes < 16) break;
        headBytes = 0;
        echo = head.readUInt16LE(4) === 1;
        const len = head.readUInt32LE(0);
        if (echo) s.write(Buffer.from(head));
        else if (len > 16) remaining = len - 16;
        else s.write(ack);
      }
    });
  });
  const ready = (): void => {
    process.stdout.write(`ready ${addr}\n`);
  };
  if (a.kind === 'unix') server.listen(a.path, ready);
  else server.listen(a.port, a.host, ready);
}

/** FractOS provider: BenchEcho invokes its onSuccess at once; BenchHold keeps delivered caps. */
async function provider(addr: string, name: string): Promise<void> {
  const p = await connect(addr, { name });
  p.onRequest(BenchEcho.tag, (inv) => {
    const cont = inv.caps[BenchEcho.slot('onSuccess')];
    if (cont) p.requestInvoke(cont).catch(() => {});
  });
  // Holds every delegated cap (for revocation benchmarks) and acknowledges on onSuccess.
  p.onRequest(BenchHold.tag, (inv) => {
    for (const c of inv.caps) if (c) inv.retain(c);
    const cont = inv.caps[BenchHold.slot('onSuccess')];
    if (cont) inv.retain(cont);
    if (cont) p.requestInvoke(cont).catch(() => {});
  });
  await p.kvPut(`${name}.echo`, await p.requestCreate(BenchEcho.tag));
  await p.kvPut(`${name}.hold`, await p.requestCreate(BenchHold.tag));
  const sink = await p.memoryCreateShared(4 << 20, Perm.RW);
  await p.kvPut(`${name}.sink`, sink.cid);
  process.stdout.write('ready\n');
  p.on('close', () => process.exit(0));
}

const [mode, ...rest] = process.argv.slice(2);
if (mode === 'raw-echo') rawEcho(rest[0]!);
else if (mode === 'provider') void provider(rest[0]!, rest[1]!);
