/**
 * A small seeded generator (sfc32, seeded through splitmix32) so a fault plan replays the same
 * injections from the same seed. Math.random cannot be seeded; the quality needed here is
 * "statistically fair coin flips", not cryptography.
 */
export class SeededRandom {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(readonly seed: number) {
    let s = seed >>> 0;
    const next = (): number => {
      s = (s + 0x9e3779b9) >>> 0;
      let z = s;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.a = next();
    this.b = next();
    this.c = next();
    this.d = next();
    for (let i = 0; i < 12; i++) this.uint32();
  }

  uint32(): number {
    const t = (((this.a + this.b) >>> 0) + this.d) >>> 0;
    this.d = (this.d + 1) >>> 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) >>> 0;
    this.c = ((this.c << 21) | (this.c >>> 11)) >>> 0;
    this.c = (this.c + t) >>> 0;
    return t;
  }

  /** Uniform in [0, 1). */
  next(): number {
    return this.uint32() / 4294967296;
  }

  /** Uniform integer in [0, n). */
  below(n: number): number {
    return Math.floor(this.next() * n);
  }

  /** Standard normal (Box-Muller). */
  normal(): number {
    const u = 1 - this.next();
    const v = this.next();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }
}

/** Derives the seed of a plan's Nth fault from the plan's seed, so faults draw independently. */
export function deriveSeed(planSeed: number, index: number): number {
  return new SeededRandom((planSeed ^ Math.imul(index + 1, 0x9e3779b1)) >>> 0).uint32();
}

/** A fresh seed for a fault given none (shown with the fault so the run can be replayed). */
export function freshSeed(): number {
  return Math.floor(Math.random() * 2 ** 32) >>> 0;
}
