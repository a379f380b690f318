/**
 * A session's bitmap: one bit per copy unit, on top of the block layer's AllocationMap
 * (lazily chunked, word-at-a-time ranges, O(1) counts), so a 10 TiB session at 64 KiB units
 * costs a Map until bits are set. UnitGeometry turns byte ranges into unit ranges.
 */
import { AllocationMap } from '../block/AllocationMap.js';
import { invariant } from './CopySession.js';

/** A run of units: [start, start + count). */
export type UnitRun = [start: number, count: number];

export class CopyBitmap {
  private readonly map: AllocationMap;

  constructor(readonly units: number) {
    this.map = new AllocationMap(units);
  }

  test(u: number): boolean {
    return this.map.test(u);
  }

  /** True when every unit of [u0, u1) is set: one test for the common one-unit request. */
  allSet(u0: number, u1: number): boolean {
    if (u1 - u0 === 1) return this.map.test(u0);
    return u1 <= u0 || this.map.nextClear(u0, u1) === u1;
  }

  anySet(u0: number, u1: number): boolean {
    return u1 > u0 && this.map.nextSet(u0, u1) < u1;
  }

  set(u: number, count = 1): number {
    return this.map.set(u, count);
  }

  clear(u: number, count = 1): number {
    return this.map.clear(u, count);
  }

  get count(): number {
    return this.map.allocated;
  }

  get full(): boolean {
    return this.map.allocated === this.units;
  }

  nextSet(from: number, end = this.units): number {
    return this.map.nextSet(from, end);
  }

  nextClear(from: number, end = this.units): number {
    return this.map.nextClear(from, end);
  }

  fill(): void {
    this.map.set(0, this.units);
  }

  reset(): void {
    this.map.clear(0, this.units);
  }

  /** Runs of set units (or clear ones), ascending. */
  runs(ofSet = true): UnitRun[] {
    const out: UnitRun[] = [];
    let u = ofSet ? this.map.nextSet(0, this.units) : this.map.nextClear(0, this.units);
    while (u < this.units) {
      const end = ofSet ? this.map.nextClear(u, this.units) : this.map.nextSet(u, this.units);
      out.push([u, end - u]);
      u = ofSet ? this.map.nextSet(end, this.units) : this.map.nextClear(end, this.units);
    }
    return out;
  }

  /** A copy, for putting back with restore() (a control operation whose commit failed). */
  snapshot(): CopyBitmap {
    const b = new CopyBitmap(this.units);
    b.map.assign(this.map);
    return b;
  }

  restore(from: CopyBitmap): void {
    this.map.assign(from.map);
  }

  setRuns(runs: Iterable<UnitRun>): void {
    for (const [s, n] of runs) this.map.set(s, n);
  }

  static fromRuns(units: number, runs: Iterable<UnitRun>): CopyBitmap {
    const b = new CopyBitmap(units);
    b.setRuns(runs);
    return b;
  }
}

/** Unit arithmetic for a session covering [0, sizeBytes) of its volumes. */
export class UnitGeometry {
  readonly units: number;

  constructor(
    readonly sizeBytes: number,
    readonly unitSize: number,
    readonly blockSize: number,
  ) {
    invariant(unitSize > 0 && unitSize % blockSize === 0, `unit size ${unitSize} must be a positive multiple of the ${blockSize}-byte block size`);
    invariant(sizeBytes > 0 && sizeBytes % blockSize === 0, `session size ${sizeBytes} must be a positive multiple of ${blockSize}`);
    this.units = Math.ceil(sizeBytes / unitSize);
  }

  /** Units touched by [offset, offset + length), clipped to the session: [u0, u1). */
  unitsOf(offset: number, length: number): [number, number] {
    const end = Math.min(offset + length, this.sizeBytes);
    if (length <= 0 || offset >= end) return [0, 0];
    return [Math.floor(offset / this.unitSize), Math.ceil(end / this.unitSize)];
  }

  start(u: number): number {
    return u * this.unitSize;
  }

  length(u: number): number {
    return Math.min(this.unitSize, this.sizeBytes - u * this.unitSize);
  }
}
