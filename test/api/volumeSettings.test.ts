/** ArrayService UpdateVolume (allocation limit) and RenameVolume over the wire, against FakeArray. */
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { memoryServerStatus } from '../support/serverStatus.js';
import { ArrayApiServer } from '../../emulator/api/ArrayApiServer.js';
import { ApiError, ArrayClient } from '../../proto/ArrayClient.js';
import { arrayServiceClientConstructor } from '../../proto/loader.js';
import { FakeArray } from './fakeArray.js';

const logger = pino({ level: 'silent' });
const MiB = 2 ** 20;

describe('ArrayService UpdateVolume and RenameVolume', () => {
  let array: FakeArray;
  let server: ArrayApiServer;
  let client: ArrayClient;
  let address: string;

  beforeAll(async () => {
    array = new FakeArray();
    server = new ArrayApiServer({
      array,
      logger,
      status: () => memoryServerStatus(false),
    });
    const addr = await server.listen({ host: '127.0.0.1', port: 0 });
    address = `127.0.0.1:${addr.port}`;
    client = new ArrayClient(addr, { deadlineMs: 5000 });
  });
  afterAll(async () => {
    client?.close();
    await server?.close();
  });
  beforeEach(() => array.volumes.clear());

  it('carries the allocation limit at create and in every volume; absent on the wire means none', async () => {
    const v = await client.createVolume({ name: 'snap1', sizeBytes: 64 * MiB, allocLimitBytes: MiB });
    expect(v.allocLimitBytes).toBe(MiB);
    expect(array.volumes.get('snap1')!.allocLimitBytes).toBe(MiB);
    expect((await client.createVolume({ name: 'plain', sizeBytes: MiB })).allocLimitBytes).toBeNull();
    expect(array.volumes.get('plain')!.allocLimitBytes).toBeNull();
    expect((await client.listVolumes()).map((x) => [x.name, x.allocLimitBytes])).toEqual([
      ['snap1', MiB],
      ['plain', null],
    ]);
    // A raw call shows the proto3 optional field is simply absent when there is no limit.
    const Raw = arrayServiceClientConstructor();
    const raw = new Raw(address, grpc.credentials.createInsecure());
    const wire = await new Promise<Record<string, unknown>>((resolve, reject) =>
      (raw as unknown as Record<string, (req: unknown, cb: (e: Error | null, r: Record<string, unknown>) => void) => void>).GetVolume!.call(
        raw,
        { name: 'plain' },
        (e, r) => (e ? reject(e) : resolve(r)),
      ),
    );
    raw.close();
    expect(wire.allocLimitBytes ?? null).toBeNull();
  });

  it('UpdateVolume sets and removes the limit; with nothing set it returns the volume as it is', async () => {
    await client.createVolume({ name: 'v', sizeBytes: 8 * MiB });
    expect((await client.setVolumeAllocLimit('v', 2 * MiB)).allocLimitBytes).toBe(2 * MiB);
    expect(array.volumes.get('v')!.allocLimitBytes).toBe(2 * MiB);
    expect((await client.setVolumeAllocLimit('v', null)).allocLimitBytes).toBeNull();
    const err = await client.setVolumeAllocLimit('v', 16 * MiB).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApiError);
    expect((err as ApiError).code).toBe('INVALID_ARGUMENT');
    expect(await client.setVolumeAllocLimit('nope', MiB).catch((e: ApiError) => e.code)).toBe('NOT_FOUND');
  });

  it('RenameVolume passes the new name and the new-identity flag', async () => {
    const v = await client.createVolume({ name: 'a', sizeBytes: MiB });
    const same = await client.renameVolume('a', 'b');
    expect(same).toMatchObject({ name: 'b', serial: v.serial, wwn: v.wwn });
    const fresh = await client.renameVolume('b', 'c', { newIdentity: true });
    expect(fresh).toMatchObject({ name: 'c', serial: 'AL0002' });
    await client.createVolume({ name: 'd', sizeBytes: MiB });
    expect(await client.renameVolume('c', 'd').catch((e: ApiError) => [e.code, e.message])).toEqual([
      'ALREADY_EXISTS',
      'volume d already exists; choose another name',
    ]);
  });
});
