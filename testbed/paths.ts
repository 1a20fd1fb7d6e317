/** Where this checkout is on disk, found from the running module (source or dist/). */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Repository root: the nearest folder up from here with a package.json (from testbed/ or dist/testbed/). */
export const REPO_ROOT = ((): string => {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json')) && dirname(dir) !== dir) dir = dirname(dir);
  return dir;
})();

/** `bin/fractos.js` of this checkout. */
export const FRACTOS_BIN = join(REPO_ROOT, 'bin', 'fractos.js');
