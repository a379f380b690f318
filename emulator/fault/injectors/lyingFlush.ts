/**
 * lying-flush (after nbdkit's fua filter in its "discard" mode): durability is promised and
 * not given. A flush is acknowledged without reaching the device; FUA is dropped from writes.
 * With a volatile write cache on the volume, a power cut then loses writes the host was told
 * were safe, which is exactly what journaling filesystems and databases must be tested against.
 * Without one, the lie is invisible until the machine itself loses power.
 */
import type { Injector, IoRequest } from '../io.js';

export function lyingFlushInjector(): Injector {
  return {
    before(req: IoRequest): void {
      if (req.op === 'flush') req.skip = true;
      else req.fua = false;
    },
  };
}
