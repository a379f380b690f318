/** Every supported command, one list per command group; the dispatch table is built from this. */
import { capacityCommands } from './capacity.js';
import { compareAndWriteCommands } from './compareAndWrite.js';
import type { CommandDescriptor } from './dispatch.js';
import { thirdPartyCopyCommands } from './extendedCopy.js';
import { inquiryCommands } from './inquiry.js';
import { modeCommands } from './modePages.js';
import { orWriteCommands } from './orWrite.js';
import { reservationCommands } from './persistentReserveCommands.js';
import { readDefectDataCommands } from './readDefectData.js';
import { readWriteCommands } from './readWrite.js';
import { reportLunsCommands } from './reportLuns.js';
import { rsocCommands } from './rsoc.js';
import { syncCommands } from './sync.js';
import { unitCommands } from './unit.js';
import { unmapCommands } from './unmap.js';
import { writeAtomicCommands } from './writeAtomic.js';

export const allCommands: readonly CommandDescriptor[] = [
  ...unitCommands,
  ...inquiryCommands,
  ...capacityCommands,
  ...readWriteCommands,
  ...syncCommands,
  ...unmapCommands,
  ...compareAndWriteCommands,
  ...orWriteCommands,
  ...writeAtomicCommands,
  ...readDefectDataCommands,
  ...thirdPartyCopyCommands,
  ...modeCommands,
  ...reportLunsCommands,
  ...reservationCommands,
  ...rsocCommands,
];
