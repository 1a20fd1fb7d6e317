/** Shared set-up of the face-verification tests: why they skip, and batches of real ORL pairs. */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { orlPairs } from '../../facever-app/accuracy.js';
import { REPO_ROOT } from '../../facever-app/cluster.js';
import { datasetForTests } from '../../facever-app/dataset.js';
import { loadOrl } from '../../facever-app/store.js';
import { openBackend } from '../../gpu-adaptor/backend.js';

export const ORL_DIR = datasetForTests();

/** Why the stack tests cannot run here ('' when they can): no ORL photos, storage services not built, no gpu addon. */
export function faceverSkipReason(): string {
  if (!existsSync(join(ORL_DIR, 's1', '1.pgm'))) return `no ORL dataset at ${ORL_DIR}`;
  if (!existsSync(join(REPO_ROOT, 'dist', 'cli', 'storage.js'))) return 'storage services (fractos blockdev/fs) not built';
  try {
    openBackend('cpu').close();
  } catch (e) {
    return (e as Error).message;
  }
  return '';
}

const pairs = orlPairs(Array.from({ length: 40 }, (_, i) => i + 1));

/** `n` (enrolled id, probe photo) pairs of the ORL protocol, starting at `off`. */
export const batchOf = (n: number, off = 0): { id: number; image: Uint8Array }[] =>
  Array.from({ length: n }, (_, i) => {
    const pr = pairs[(off + i * 13) % pairs.length]!;
    return { id: pr.enrolled, image: loadOrl(ORL_DIR, pr.probe, pr.photo) };
  });
