/**
 * The guest's qemu command line: disks attach the way the array's hosts see them (NBD through
 * qemu's NBD client as virtio-blk, over TLS-PSK when the array wants an identity; iSCSI through
 * libiscsi as SCSI passthrough on virtio-scsi),
 * the agent port is there, and names qemu would split are refused with the fix.
 */
import { describe, expect, it } from 'vitest';
import { AGENT_PORT_NAME, defaultInitiatorName, qemuArgs, type QemuArgsOptions } from '../../emulator/vm/qemuArgs.js';

const base: QemuArgsOptions = { name: 'g1', kernel: '/k', initrd: '/i', memoryMiB: 512, cpus: 1, disks: [], agentSocket: '/run/a.sock' };

function values(args: string[], flag: string): string[] {
  return args.flatMap((a, i) => (a === flag ? [args[i + 1]!] : []));
}

describe('qemuArgs', () => {
  it('runs TCG without defaults or reboot, console on stdio, and says how many disks to wait for', () => {
    const args = qemuArgs(base);
    for (const flag of ['-nographic', '-nodefaults', '-no-reboot']) expect(args).toContain(flag);
    expect(values(args, '-accel')).toEqual(['tcg']);
    expect(values(args, '-m')).toEqual(['512']);
    expect(values(args, '-serial')).toEqual(['chardev:console']);
    expect(values(args, '-chardev')).toContain('stdio,id=console,signal=off');
    expect(values(args, '-append')[0]).toMatch(/^console=ttyS0 .*arraylab\.disks=0$/);
    expect(qemuArgs({ ...base, cmdline: 'arraylab.run=true' }).at(-1)).toMatch(/arraylab\.disks=0 arraylab\.run=true$/);
  });

  it('attaches NBD as virtio-blk and iSCSI as scsi-block on one virtio-scsi controller', () => {
    const args = qemuArgs({
      ...base,
      disks: [
        { via: 'nbd', host: '127.0.0.1', port: 10809, export: 'vol1' },
        { via: 'iscsi', portal: '127.0.0.1:3260', targetName: 'iqn.2026-11.lab.arraylab:array0', lun: 2 },
        {
          via: 'iscsi',
          portal: '127.0.0.1:3260',
          targetName: 'iqn.2026-11.lab.arraylab:array0',
          lun: 3,
          readOnly: true,
          device: 'scsi-hd',
          initiatorName: 'iqn.2026-11.x:h',
        },
      ],
    });
    expect(values(args, '-blockdev')).toEqual([
      'driver=nbd,node-name=disk0,server.type=inet,server.host=127.0.0.1,server.port=10809,export=vol1',
      'driver=iscsi,node-name=disk1,transport=tcp,portal=127.0.0.1:3260,target=iqn.2026-11.lab.arraylab:array0,lun=2,initiator-name=iqn.2026-11.lab.arraylab.guest:g1',
      'driver=iscsi,node-name=disk2,transport=tcp,portal=127.0.0.1:3260,target=iqn.2026-11.lab.arraylab:array0,lun=3,initiator-name=iqn.2026-11.x:h,read-only=on',
    ]);
    const devices = values(args, '-device');
    expect(devices.filter((d) => d.startsWith('virtio-scsi-pci'))).toHaveLength(1);
    expect(devices).toContain('virtio-blk-pci,drive=disk0,serial=vol1');
    expect(devices).toContain('scsi-block,drive=disk1,bus=scsi0.0,channel=0,scsi-id=1,lun=0');
    expect(devices).toContain('scsi-hd,drive=disk2,bus=scsi0.0,channel=0,scsi-id=2,lun=0');
    expect(devices).toContain(`virtserialport,bus=vser0.0,chardev=agent,name=${AGENT_PORT_NAME}`);
    expect(values(args, '-chardev')).toContain('socket,id=agent,path=/run/a.sock,server=on,wait=off');
    expect(values(args, '-append')[0]).toMatch(/arraylab\.disks=3$/);
  });

  it('attaches NBD over TLS-PSK: one tls-creds-psk client object per key directory and identity, named on each blockdev', () => {
    const psk = { pskDir: '/run/vms/g1/nbd-psk', identity: 'web' };
    const args = qemuArgs({
      ...base,
      disks: [
        { via: 'nbd', host: '127.0.0.1', port: 10809, export: 'vol1', tls: psk },
        { via: 'nbd', host: '127.0.0.1', port: 10809, export: 'vol2', tls: psk, readOnly: true },
        { via: 'nbd', host: '127.0.0.1', port: 10810, export: 'vol3', tls: { pskDir: '/k', identity: 'db' } },
        { via: 'nbd', host: '127.0.0.1', port: 10809, export: 'plain' },
      ],
    });
    expect(values(args, '-object')).toEqual([
      'tls-creds-psk,id=tls0,endpoint=client,dir=/run/vms/g1/nbd-psk,username=web',
      'tls-creds-psk,id=tls1,endpoint=client,dir=/k,username=db',
    ]);
    expect(values(args, '-blockdev')).toEqual([
      'driver=nbd,node-name=disk0,server.type=inet,server.host=127.0.0.1,server.port=10809,export=vol1,tls-creds=tls0',
      'driver=nbd,node-name=disk1,server.type=inet,server.host=127.0.0.1,server.port=10809,export=vol2,tls-creds=tls0,read-only=on',
      'driver=nbd,node-name=disk2,server.type=inet,server.host=127.0.0.1,server.port=10810,export=vol3,tls-creds=tls1',
      'driver=nbd,node-name=disk3,server.type=inet,server.host=127.0.0.1,server.port=10809,export=plain',
    ]);
    // The object comes before the first blockdev that names it.
    expect(args.indexOf('tls-creds-psk,id=tls1,endpoint=client,dir=/k,username=db')).toBeLessThan(args.findIndex((a) => a.includes('tls-creds=tls1')));
    expect(() => qemuArgs({ ...base, disks: [{ via: 'nbd', host: 'h', port: 1, export: 'v', tls: { pskDir: '/a,b', identity: 'web' } }] })).toThrow(
      /NBD PSK directory "\/a,b" holds a comma/,
    );
  });

  it('refuses what qemu would split or misread, naming the fix', () => {
    expect(() => qemuArgs({ ...base, disks: [{ via: 'nbd', host: '127.0.0.1', port: 1, export: 'a,b' }] })).toThrow(/export "a,b" holds a comma.*rename it/);
    expect(() => qemuArgs({ ...base, disks: [{ via: 'iscsi', portal: '127.0.0.1', targetName: 't', lun: 0 }] })).toThrow(/portal "127.0.0.1" is not host:port/);
    expect(() => qemuArgs({ ...base, name: 'a b' })).toThrow(/guest name "a b" must be/);
    expect(defaultInitiatorName('Lab_VM1')).toBe('iqn.2026-11.lab.arraylab.guest:lab-vm1');
  });

  it('detached guests: console on a unix socket with a log file, no display, QMP and a pidfile', () => {
    const args = qemuArgs({
      ...base,
      console: { socket: '/run/vm/c.sock', logFile: '/run/vm/console.log' },
      qmpSocket: '/run/vm/q.sock',
      pidFile: '/run/vm/qemu.pid',
    });
    expect(args).not.toContain('-nographic');
    expect(values(args, '-display')).toEqual(['none']);
    expect(values(args, '-chardev')).toContain('socket,id=console,path=/run/vm/c.sock,server=on,wait=off,logfile=/run/vm/console.log,logappend=on');
    expect(values(args, '-serial')).toEqual(['chardev:console']);
    expect(values(args, '-qmp')).toEqual(['unix:/run/vm/q.sock,server=on,wait=off']);
    expect(values(args, '-pidfile')).toEqual(['/run/vm/qemu.pid']);
    expect(() => qemuArgs({ ...base, console: { socket: '/run/a,b/c.sock' } })).toThrow(/console socket path "\/run\/a,b\/c.sock" holds a comma/);
  });
});
