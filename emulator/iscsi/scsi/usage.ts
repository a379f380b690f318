/** CDB usage masks for the common block-command layouts (LBA, length, GROUP NUMBER; control byte unused). */
const F = 0xff;
export function usage6(op: number, byte1: number): number[] {
  return [op, byte1, F, F, F, 0x00];
}
export function usage10(op: number, byte1: number): number[] {
  return [op, byte1, F, F, F, F, 0x1f, F, F, 0x00];
}
export function usage12(op: number, byte1: number): number[] {
  return [op, byte1, F, F, F, F, F, F, F, F, 0x1f, 0x00];
}
export function usage16(op: number, byte1: number): number[] {
  return [op, byte1, F, F, F, F, F, F, F, F, F, F, F, F, 0x1f, 0x00];
}
