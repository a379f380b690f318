export { ScsiLogicalUnits, type ScsiLogicalUnitsOptions } from './scsiTarget.js';
export type { CommandDescriptor, CommandAccess } from './dispatch.js';
export * from './types.js';
