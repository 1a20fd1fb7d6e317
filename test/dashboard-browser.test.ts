/**
 * The dashboard page in a real browser: headless Chromium (Debian's /usr/bin/chromium,
 * or FRACTOS_CHROMIUM) driven by playwright-core, against three Controllers as OS
 * processes. Asserts what is rendered (nodes, Processes, links, chain and star edges of
 * the graph) and, after one Controller is killed, that the page shows it down. Screenshots
 * are kept under test-artifacts/dashboard/ (printed by the test). Skips, with the reason,
 * where no chromium is installed.
 */
import test from 'ava';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { startDashboard } from '../dashboard/server.js';
import { dashCluster } from './helpers/dash-cluster.js';
import { REPO_ROOT } from './helpers/spawn.js';

const CHROMIUM = process.env.FRACTOS_CHROMIUM ?? '/usr/bin/chromium';
const ARTIFACTS = join(REPO_ROOT, 'test-artifacts', 'dashboard');

const haveChromium = existsSync(CHROMIUM);
const browserTest = haveChromium ? test : test.skip;
if (!haveChromium) console.log(`dashboard-browser: skipped: no chromium at ${CHROMIUM} (apt-get install chromium, or set FRACTOS_CHROMIUM)`);

async function shot(page: Page, name: string, log: (m: string) => void): Promise<void> {
  mkdirSync(ARTIFACTS, { recursive: true });
  const path = join(ARTIFACTS, name);
  await page.screenshot({ path, fullPage: true });
  log(`screenshot: ${path}`);
}

browserTest('the page renders nodes, links and the chain and star invocation graph, and shows a killed Controller down', async (t) => {
  const c = await dashCluster();
  t.teardown(() => c.stop());
  const d = await startDashboard({ port: 0, controllers: c.specs.map((s) => s.unix), intervalMs: 200, windowMs: 60_000 });
  t.teardown(() => d.close());
  await c.traffic(3);
  const browser: Browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox'] });
  t.teardown(() => browser.close());
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  await page.goto(d.url);
  await page.waitForSelector('#conn[data-state="live"]');

  // Nodes: three Controllers up, each with its Processes listed.
  for (const n of [1, 2, 3]) await page.waitForSelector(`.node[data-node="${n}"][data-up="true"]`);
  const names = await page.$$eval('.node[data-node="2"] tr[data-process] td:nth-child(2)', (tds) => tds.map((td) => td.textContent));
  t.deepEqual([...names].sort(), ['hub', 'leaf-2', 'mid']);
  // Links: every pair, up.
  for (const l of ['1-2', '1-3', '2-3']) await page.waitForSelector(`tr[data-link="${l}"][data-up="true"]`);

  // Graph: chain head@1 → mid@2 → tail@3 and star hub@2 → leaf-1@1, leaf-2@2, leaf-3@3.
  const end = (n: string): string => `${c.ids.get(n)!.controller}:${c.ids.get(n)!.process}`;
  const expected = [['head', 'mid'], ['mid', 'tail'], ['hub', 'leaf-1'], ['hub', 'leaf-2'], ['hub', 'leaf-3']].map(([a, b]) => `${end(a!)}->${end(b!)}`);
  for (const e of expected) await page.waitForSelector(`[data-edge="${e}"][data-count="3"]`, { timeout: 15_000 });
  const edges = await page.$$eval('[data-edge]', (gs) => gs.map((g) => g.getAttribute('data-edge')));
  t.deepEqual([...edges].sort(), [...expected].sort(), 'no other edge is drawn');
  // The hub has three outgoing edges (a star), mid one in and one out (a chain).
  t.is(edges.filter((e) => e!.startsWith(`${end('hub')}->`)).length, 3);
  t.is(edges.filter((e) => e!.endsWith(`->${end('mid')}`)).length, 1);
  t.is(edges.filter((e) => e!.startsWith(`${end('mid')}->`)).length, 1);
  for (const n of ['head', 'mid', 'tail', 'hub', 'leaf-1', 'leaf-2', 'leaf-3']) t.truthy(await page.$(`.pnode[data-end="${end(n)}"]`), n);
  await shot(page, 'cluster-up.png', t.log);

  // Kill Controller 3: the page shows it down, the others up, its links gone or down.
  await c.ctl[2]!.kill9();
  await page.waitForSelector('.node[data-node="3"][data-up="false"]', { timeout: 15_000 });
  t.is(await page.textContent('.node[data-node="3"] .state'), 'down');
  t.truthy(await page.$('.ctl-label[data-up="false"]'), 'the graph marks its column down');
  await page.waitForFunction(() => !document.querySelector('tr[data-link="1-3"][data-up="true"], tr[data-link="2-3"][data-up="true"]'), null, { timeout: 15_000 });
  for (const n of [1, 2]) t.truthy(await page.$(`.node[data-node="${n}"][data-up="true"]`));
  t.truthy(await page.$('tr[data-link="1-2"][data-up="true"]'));
  await shot(page, 'controller-3-killed.png', t.log);
});

test('a Process name with markup is shown as text (names are chosen by Processes)', async (t) => {
  if (!haveChromium) return t.pass(`skipped: no chromium at ${CHROMIUM}`);
  const { clusterSpecs, startController } = await import('./helpers/spawn.js');
  const { connect } = await import('../libfractos/index.js');
  const [spec] = await clusterSpecs(1);
  const ctl = await startController(spec!, [spec!]);
  t.teardown(() => ctl.stop());
  const evil = await connect(spec!.unix, { name: '<img src=x onerror="document.body.dataset.pwned=1">' });
  t.teardown(() => evil.close());
  const d = await startDashboard({ port: 0, controllers: [spec!.unix], intervalMs: 200 });
  t.teardown(() => d.close());
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox'] });
  t.teardown(() => browser.close());
  const page = await browser.newPage();
  await page.goto(d.url);
  await page.waitForSelector('.node[data-node="1"] tr[data-process]');
  t.is(await page.textContent('.node[data-node="1"] tr[data-process] td:nth-child(2)'), '<img src=x onerror="document.body.dataset.pwned=1">');
  t.is(await page.$('.node img'), null);
  t.is(await page.evaluate(() => document.body.dataset.pwned), undefined);
});
