/**
 * The fault kinds, in the order help and errors list them. A file of its own with no imports, so
 * the CLI can offer them as choices without loading the engine (or gRPC) for --help.
 */
export const FAULT_KINDS = [
  'error',
  'bad-blocks',
  'delay',
  'rate',
  'pause',
  'corrupt',
  'lying-flush',
  'disconnect',
  'reset',
  'copy-error',
  'tape-error',
  'api-error',
  'api-delay',
  'link-down',
  'link-delay',
  'link-rate',
  'link-loss',
] as const;

export type FaultKind = (typeof FAULT_KINDS)[number];
