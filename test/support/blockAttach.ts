/**
 * Puts an export on a kernel block device without an NBD or iSCSI initiator in the kernel:
 * qemu-storage-daemon connects with qemu's own NBD client and exports the volume as a FUSE
 * file, and losetup turns that file into /dev/loopN for mkfs and mount.
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, existsSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { requireTool } from './tools.js';
import { sleep } from './wait.js';

export interface AttachedVolume {
  /** /dev/loopN backed by the FUSE export. */
  loop: string;
  /** The FUSE file qemu-storage-daemon serves. */
  file: string;
  detach(): Promise<void>;
}

export interface AttachOptions {
  port: number;
  exportName: string;
  dir: string;
  readOnly?: boolean;
  /**
   * Writable, but every write goes to a throwaway qcow2 overlay in dir and the volume is only
   * read: to replay a filesystem journal on a copy that must stay as it is (or is read-only).
   */
  overlay?: boolean;
}

export async function attachNbd(opts: AttachOptions): Promise<AttachedVolume> {
  const nbd = `driver=nbd,node-name=n0,server.type=inet,server.host=127.0.0.1,server.port=${opts.port},export=${opts.exportName}`;
  return attachBlockdev(nbd, `nbd://127.0.0.1:${opts.port}/${opts.exportName}`, opts);
}

export interface IscsiAttachOptions {
  /** qemu's iscsi driver options without node-name, e.g. support/iscsi.ts qemuIscsiOpts(). */
  blockdev: string;
  /** Names the FUSE file in dir. */
  name: string;
  dir: string;
  readOnly?: boolean;
}

/** The same through qemu's iSCSI initiator (libiscsi): blockdev driver=iscsi. */
export async function attachIscsi(opts: IscsiAttachOptions): Promise<AttachedVolume> {
  return attachBlockdev(`${opts.blockdev},node-name=n0`, undefined, { port: 0, exportName: opts.name, dir: opts.dir, readOnly: opts.readOnly ?? false });
}

/** node: a --blockdev named n0; backingUrl: what qemu-img opens for an overlay's backing file. */
async function attachBlockdev(node: string, backingUrl: string | undefined, opts: AttachOptions): Promise<AttachedVolume> {
  const qsd = requireTool('qemu-storage-daemon');
  requireTool('losetup');
  const file = join(opts.dir, `${opts.exportName}.fuse`);
  closeSync(openSync(file, 'a'));
  let overlay: string | undefined;
  let args: string[];
  if (opts.overlay) {
    overlay = join(opts.dir, `${opts.exportName}.overlay.qcow2`);
    // qemu-img reads the export's size; the daemon is given the backing node explicitly.
    if (backingUrl === undefined) throw new Error('overlay is only supported for NBD exports');
    execFileSync(requireTool('qemu-img'), ['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', backingUrl, overlay]);
    args = [
      '--blockdev',
      `${node},read-only=on`,
      '--blockdev',
      `driver=file,node-name=ovf,filename=${overlay}`,
      '--blockdev',
      'driver=qcow2,node-name=ov,file=ovf,backing=n0',
      '--export',
      `type=fuse,id=e0,node-name=ov,mountpoint=${file},writable=on`,
    ];
  } else {
    args = ['--blockdev', node, '--export', `type=fuse,id=e0,node-name=n0,mountpoint=${file},writable=${opts.readOnly ? 'off' : 'on'}`];
  }
  const child: ChildProcess = spawn(qsd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  child.stdout!.on('data', (d) => (log += d));
  child.stderr!.on('data', (d) => (log += d));
  // The FUSE mount replaces the empty placeholder file with the export's size.
  for (let i = 0; ; i++) {
    if (child.exitCode !== null) throw new Error(`qemu-storage-daemon exited (${child.exitCode}): ${log}`);
    if (existsSync(file) && statSync(file).size > 0) break;
    if (i > 200) {
      child.kill('SIGKILL');
      throw new Error(`qemu-storage-daemon did not export ${opts.exportName} over FUSE: ${log}`);
    }
    await sleep(50);
  }
  const loop = execFileSync('losetup', ['-f', '--show', ...(opts.readOnly ? ['-r'] : []), file], { encoding: 'utf8' }).trim();
  let detached = false;
  return {
    loop,
    file,
    async detach() {
      if (detached) return;
      detached = true;
      try {
        execFileSync('losetup', ['-d', loop]);
      } catch {
        // already gone
      }
      // losetup -d is asynchronous in the kernel: wait until the loop device lets go of the file.
      for (let i = 0; i < 100; i++) {
        const status = execFileSync('losetup', ['-j', file], { encoding: 'utf8' }).trim();
        if (!status) break;
        await sleep(50);
      }
      if (child.exitCode === null) {
        child.kill('SIGTERM');
        for (let i = 0; i < 100 && child.exitCode === null; i++) await sleep(50);
        if (child.exitCode === null) child.kill('SIGKILL');
      }
      try {
        execFileSync('umount', ['-l', file], { stdio: 'ignore' });
      } catch {
        // qemu-storage-daemon unmounts its export on exit
      }
      if (overlay) rmSync(overlay, { force: true });
    },
  };
}
