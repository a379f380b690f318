/**
 * The qemu-system-x86_64 command line of a guest: TCG, serial console on stdio, the array's
 * volumes as disks (NBD through qemu's NBD client as virtio-blk; iSCSI through libiscsi as SCSI
 * disks on virtio-scsi; NBD over TLS-PSK with a tls-creds-psk object), and the virtio-serial port
 * the in-guest agent is reached through.
 * Pure: no processes, so the argument rules are testable on their own.
 */

/** A volume attached through qemu's own NBD client, seen in the guest as /dev/vdX. */
export interface NbdDisk {
  via: 'nbd';
  host: string;
  port: number;
  export: string;
  readOnly?: boolean;
  /**
   * TLS-PSK (an array with nbd.tls.psk, where a host's NBD identity decides what it sees): qemu
   * reads DIR/keys.psk (psktool lines) and offers identity's key.
   */
  tls?: { pskDir: string; identity: string };
}

/**
 * A LUN attached through qemu's libiscsi driver, seen in the guest as /dev/sdX. `scsi-block`
 * (default) passes every SCSI command through, so the guest sees the array's own INQUIRY and VPD
 * pages (vendor, serial, WWN in /sys/block/sdX/device/wwid); `scsi-hd` has qemu emulate the disk.
 */
export interface IscsiDisk {
  via: 'iscsi';
  /** "host:port" */
  portal: string;
  targetName: string;
  lun: number;
  /** Default iqn.2026-11.lab.arraylab.guest:NAME (host affinity on the array matches it). */
  initiatorName?: string;
  readOnly?: boolean;
  device?: 'scsi-block' | 'scsi-hd';
}

export type GuestDisk = NbdDisk | IscsiDisk;

export interface QemuArgsOptions {
  name: string;
  kernel: string;
  initrd: string;
  memoryMiB: number;
  cpus: number;
  disks: GuestDisk[];
  /** Unix socket qemu listens on for the virtio-serial port org.arraylab.agent. */
  agentSocket: string;
  /** Appended to the kernel command line. */
  cmdline?: string;
  /**
   * Where the serial console goes: qemu's stdio (default: the in-process launch), or a unix
   * socket qemu listens on (detached guests: `arraylab vm console` attaches to it), with
   * everything it prints also appended to logFile.
   */
  console?: { socket: string; logFile?: string };
  /** Unix socket for QMP (status, quit), qemu listens. */
  qmpSocket?: string;
  /** qemu writes its pid here. */
  pidFile?: string;
}

/** The name of the virtio-serial port (/dev/virtio-ports/NAME in the guest). */
export const AGENT_PORT_NAME = 'org.arraylab.agent';

/**
 * Kernel parameters every guest gets: the serial console, quiet (printk would interleave with
 * command output and costs time on an emulated UART), no speculative-execution mitigations and
 * no TSC checks (they only slow TCG down), and panic=-1 so a panic ends qemu (-no-reboot)
 * instead of hanging the caller. The rest only shortens boot under TCG (about 0.7 s together):
 * no crypto self-tests, no LSM or audit, no IPv6 (a guest has no network; the agent talks over
 * virtio-serial).
 */
const BASE_CMDLINE = [
  'console=ttyS0',
  'quiet',
  'mitigations=off',
  'tsc=reliable',
  'no_timer_check',
  'panic=-1',
  'cryptomgr.notests',
  'security=none',
  'audit=0',
  'ipv6.disable=1',
];

export function defaultInitiatorName(guestName: string): string {
  return `iqn.2026-11.lab.arraylab.guest:${guestName.toLowerCase().replace(/[^a-z0-9.-]/g, '-')}`;
}

function noComma(what: string, value: string): string {
  // qemu splits option strings on commas (",," escapes, but names never need one).
  if (value.includes(',')) throw new Error(`${what} ${JSON.stringify(value)} holds a comma, which qemu would split on; rename it`);
  return value;
}

function splitPortal(portal: string): { host: string; port: number } {
  const m = /^(.+):(\d+)$/.exec(portal);
  if (!m) throw new Error(`iSCSI portal ${JSON.stringify(portal)} is not host:port; give it as e.g. 127.0.0.1:3260`);
  return { host: m[1]!, port: Number(m[2]) };
}

export function qemuArgs(o: QemuArgsOptions): string[] {
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(o.name)) throw new Error(`guest name ${JSON.stringify(o.name)} must be letters, digits, '.', '_' or '-'`);
  const args = [
    '-name',
    o.name,
    '-accel',
    'tcg',
    '-M',
    'q35',
    // Node's V8 wants SSE4/AVX-era instructions; qemu64 lacks some, max has all TCG can do.
    '-cpu',
    'max',
    '-smp',
    String(o.cpus),
    '-m',
    String(o.memoryMiB),
    // A detached qemu has no terminal: no display at all rather than -nographic's stdio.
    o.console ? '-display' : '-nographic',
    ...(o.console ? ['none'] : []),
    '-nodefaults',
    '-no-reboot',
    '-chardev',
    o.console
      ? `socket,id=console,path=${noComma('console socket path', o.console.socket)},server=on,wait=off${o.console.logFile ? `,logfile=${noComma('console log path', o.console.logFile)},logappend=on` : ''}`
      : 'stdio,id=console,signal=off',
    '-serial',
    'chardev:console',
    '-kernel',
    o.kernel,
    '-initrd',
    o.initrd,
  ];

  let scsiController = false;
  // One tls-creds-psk object per key directory and identity, shared by the disks that use it.
  const tlsCreds = new Map<string, string>();
  o.disks.forEach((disk, i) => {
    const node = `disk${i}`;
    const ro = disk.readOnly ? ',read-only=on' : '';
    if (disk.via === 'nbd') {
      let tls = '';
      if (disk.tls) {
        const { pskDir, identity } = disk.tls;
        const key = `${pskDir}\0${identity}`;
        let id = tlsCreds.get(key);
        if (id === undefined) {
          id = `tls${tlsCreds.size}`;
          tlsCreds.set(key, id);
          args.push(
            '-object',
            `tls-creds-psk,id=${id},endpoint=client,dir=${noComma('NBD PSK directory', pskDir)},username=${noComma('NBD PSK identity', identity)}`,
          );
        }
        tls = `,tls-creds=${id}`;
      }
      args.push(
        '-blockdev',
        `driver=nbd,node-name=${node},server.type=inet,server.host=${noComma('NBD host', disk.host)},server.port=${disk.port},export=${noComma('export', disk.export)}${tls}${ro}`,
      );
      // The export name as the disk's serial (/sys/block/vdX/serial, at most 20 bytes).
      args.push('-device', `virtio-blk-pci,drive=${node},serial=${disk.export.slice(0, 20)}`);
    } else {
      const { host, port } = splitPortal(disk.portal);
      if (!scsiController) {
        args.push('-device', 'virtio-scsi-pci,id=scsi0');
        scsiController = true;
      }
      const initiator = disk.initiatorName ?? defaultInitiatorName(o.name);
      args.push(
        '-blockdev',
        `driver=iscsi,node-name=${node},transport=tcp,portal=${noComma('portal host', host)}:${port},target=${noComma('target name', disk.targetName)},lun=${disk.lun},initiator-name=${noComma('initiator name', initiator)}${ro}`,
      );
      args.push('-device', `${disk.device ?? 'scsi-block'},drive=${node},bus=scsi0.0,channel=0,scsi-id=${i},lun=0`);
    }
  });

  args.push(
    '-device',
    'virtio-serial-pci,id=vser0',
    '-chardev',
    `socket,id=agent,path=${noComma('agent socket path', o.agentSocket)},server=on,wait=off`,
    '-device',
    `virtserialport,bus=vser0.0,chardev=agent,name=${AGENT_PORT_NAME}`,
  );

  if (o.qmpSocket) args.push('-qmp', `unix:${noComma('QMP socket path', o.qmpSocket)},server=on,wait=off`);
  if (o.pidFile) args.push('-pidfile', noComma('pidfile path', o.pidFile));

  const cmdline = [...BASE_CMDLINE, `arraylab.disks=${o.disks.length}`];
  if (o.cmdline) cmdline.push(o.cmdline);
  args.push('-append', cmdline.join(' '));
  return args;
}
