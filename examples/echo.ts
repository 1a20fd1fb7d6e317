/**
 * The README's libfractos example, runnable: a service Process `svc` serves `echo` (doubles
 * `x`), an application Process `app` calls it through a sync RPC (A -> B -> A'), prints 42,
 * and both close. Needs a running Controller:
 *
 *   fractos controller &                       # unix:/tmp/fractos-controller.sock
 *   npm run build && node dist/examples/echo.js [CONTROLLER_ADDR]
 *
 * The address: the first argument, else $FRACTOS_CONTROLLER, else the default socket.
 * Exit status 0 on success; a FractosError (e.g. EDISCONNECTED: no Controller) exits 1.
 */
import { connect, defineRequest, defineReply } from '../libfractos/index.js';

const addr = process.argv[2] ?? process.env.FRACTOS_CONTROLLER ?? 'unix:/tmp/fractos-controller.sock';

const Echo = defineRequest('echo', { x: 'u32' }, ['buf', 'onSuccess', 'onError'] as const);
const EchoReply = defineReply('echo.reply', { y: 'u32' }, [] as const);

async function main(): Promise<void> {
  const svc = await connect(addr, { name: 'svc' });
  svc.serve(Echo, async ({ imms, caps }) => svc.invoke(caps.onSuccess, EchoReply, { y: 2 * imms.x }));
  await svc.kvPut('echo', await svc.createRequest(Echo));

  const app = await connect(addr, { name: 'app' });
  const { cid: buf } = await app.memoryCreateShared(4096); // shared Memory, delegated below
  const reply = await app.rpc(await app.kvGet('echo'), Echo, { x: 21 }, { buf }); // A -> B -> A'
  console.log(EchoReply.decode(reply).imms.y); // 42

  // A Process keeps its channel (and so node) alive until it is closed.
  await app.close();
  await svc.close();
}

main().catch((err: unknown) => {
  process.stderr.write(`echo: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
