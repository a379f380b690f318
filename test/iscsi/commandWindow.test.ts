/** The iSCSI command window (RFC 7143 §4.2.2.1): bounds, order, and a full window that admits nothing. */
import { describe, expect, it } from 'vitest';
import { CommandWindow, snAdd } from '../../emulator/iscsi/commandWindow.js';

describe('CommandWindow', () => {
  it('admits the next command, holds later ones inside the window, refuses beyond it', () => {
    const w = new CommandWindow(100, 4);
    expect(w.maxCmdSN).toBe(103);
    expect([w.check(100), w.check(102), w.check(103), w.check(104), w.check(99)]).toEqual(['now', 'later', 'later', 'outside', 'duplicate']);
    w.hold(102, 'c102');
    expect(w.check(102)).toBe('duplicate');
  });

  it('closes when depth commands are in flight: even ExpCmdSN is outside until one completes', () => {
    const w = new CommandWindow(0xfffffffe, 3); // wraps around 2^32
    for (let i = 0; i < 3; i++) {
      expect(w.check(w.expCmdSN)).toBe('now');
      w.accept();
      expect(w.maxCmdSN).toBe(snAdd(0xfffffffe, 2)); // never moves back
    }
    expect(w.inFlight).toBe(3);
    expect(w.check(w.expCmdSN)).toBe('outside');
    w.complete();
    expect(w.maxCmdSN).toBe(w.expCmdSN);
    expect(w.check(w.expCmdSN)).toBe('now');
  });
});
