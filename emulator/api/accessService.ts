/**
 * arraylab.v1.AccessService: users, tenants, ownership and the audit log (emulator/auth).
 * Unary calls go through ArrayApiServer's common wrapper; who may call which is ApiGuard's.
 */
import type * as grpc from '@grpc/grpc-js';
import type * as pb from '../../proto/gen/index.js';
import { StatusError } from '../../proto/errors.js';
import { toByteCount } from '../../proto/wire/wire.js';
import type { AccessControl } from '../auth/AccessControl.js';
import type { TenantRow, UserRow } from '../auth/AccessStore.js';
import { principalOf } from '../auth/ApiGuard.js';

type Unary = <Req, Res>(method: string, fn: (req: Req, call: grpc.ServerUnaryCall<Req, Res>) => Res | Promise<Res>) => grpc.handleUnaryCall<Req, Res>;

/** Turns a volume/host/cartridge name into the key ownership is recorded under. */
export interface OwnershipKeys {
  volumeUuid(name: string): string;
  hostExists(name: string): boolean;
  cartridgeExists(label: string): boolean;
}

export function accessHandlers(access: AccessControl, keys: OwnershipKeys, unary: Unary): pb.AccessServiceHandlers {
  const userToWire = (u: UserRow): pb.User => ({
    name: u.name,
    role: u.role,
    tenant: u.tenant,
    createdAt: u.createdAt,
    expiresAt: u.expiresAt,
    certSubject: u.certSubject,
    certFingerprint: u.certFingerprint,
    hasToken: u.tokenHash !== null,
    tokenRotatedAt: u.rotatedAt,
    permissions: access.permissionsOf(u.role),
  });
  const tenantToWire = (t: TenantRow): pb.Tenant => {
    const use = access.usage(t.name);
    return {
      name: t.name,
      maxCapacityBytes: t.maxCapacityBytes,
      maxVolumes: t.maxVolumes,
      maxSessions: t.maxSessions,
      capacityBytes: use.capacityBytes,
      volumes: use.volumes,
      sessions: use.sessions,
      hosts: use.hosts,
      cartridges: use.cartridges,
      users: use.users,
      createdAt: t.createdAt,
    };
  };
  const seconds = (v: pb.AddUserRequest__Output['expiresInSeconds']) => toByteCount(v, 'expires_in_seconds');
  const tenantSpec = (req: pb.TenantSpec__Output) => ({
    name: req.name,
    ...(req.maxCapacityBytes !== undefined && req.maxCapacityBytes !== null
      ? { maxCapacityBytes: toByteCount(req.maxCapacityBytes, 'max_capacity_bytes') }
      : {}),
    ...(req.maxVolumes !== undefined && req.maxVolumes !== null ? { maxVolumes: req.maxVolumes } : {}),
    ...(req.maxSessions !== undefined && req.maxSessions !== null ? { maxSessions: req.maxSessions } : {}),
  });

  return {
    WhoAmI: unary('WhoAmI', (_req: pb.WhoAmIRequest__Output, call) => {
      const p = principalOf(call.metadata);
      if (p === undefined) {
        // The API runs without authentication (api.auth: off): everyone acts as an admin.
        return {
          name: '',
          role: 'admin',
          tenant: '',
          createdAt: '',
          expiresAt: '',
          certSubject: '',
          certFingerprint: '',
          hasToken: false,
          tokenRotatedAt: '',
          permissions: access.permissionsOf('admin'),
        };
      }
      return userToWire(access.getUser(p.user));
    }),
    AddUser: unary('AddUser', (req: pb.AddUserRequest__Output) => {
      const { user, token } = access.addUser({
        name: req.name,
        role: req.role,
        tenant: req.tenant,
        expiresInSeconds: seconds(req.expiresInSeconds),
        certSubject: req.certSubject,
        certFingerprint: req.certFingerprint,
        noToken: req.noToken,
      });
      return { user: userToWire(user), token };
    }),
    ListUsers: unary('ListUsers', () => ({ users: access.listUsers().map(userToWire) })),
    GetUser: unary('GetUser', (req: pb.GetUserRequest__Output) => userToWire(access.getUser(req.name))),
    RemoveUser: unary('RemoveUser', (req: pb.RemoveUserRequest__Output, call) => {
      access.removeUser(req.name, principalOf(call.metadata)?.user);
      return {};
    }),
    RotateUser: unary('RotateUser', (req: pb.RotateUserRequest__Output) => {
      const { user, token } = access.rotateUser(req.name, seconds(req.expiresInSeconds));
      return { user: userToWire(user), token };
    }),
    AddTenant: unary('AddTenant', (req: pb.TenantSpec__Output) => tenantToWire(access.addTenant(tenantSpec(req)))),
    ListTenants: unary('ListTenants', () => ({ tenants: access.listTenants().map(tenantToWire) })),
    GetTenant: unary('GetTenant', (req: pb.GetTenantRequest__Output) => tenantToWire(access.getTenant(req.name))),
    SetTenant: unary('SetTenant', (req: pb.TenantSpec__Output) => tenantToWire(access.setTenant(tenantSpec(req)))),
    RemoveTenant: unary('RemoveTenant', (req: pb.RemoveTenantRequest__Output) => {
      access.removeTenant(req.name, req.force);
      return {};
    }),
    AssignToTenant: unary('AssignToTenant', (req: pb.AssignToTenantRequest__Output) => {
      if (req.tenant !== '') access.getTenant(req.tenant);
      // Check every name first, so a typo assigns nothing.
      const volumes = req.volumes.map((v) => keys.volumeUuid(v));
      for (const h of req.hosts) if (!keys.hostExists(h)) throw new StatusError('NOT_FOUND', `no host ${h}; list hosts with arraylab host list`);
      for (const c of req.cartridges)
        if (!keys.cartridgeExists(c)) throw new StatusError('NOT_FOUND', `no cartridge ${c}; list cartridges with arraylab tape list`);
      for (const uuid of volumes) access.setOwner('volume', uuid, req.tenant);
      for (const h of req.hosts) access.setOwner('host', h, req.tenant);
      for (const c of req.cartridges) access.setOwner('cartridge', c, req.tenant);
      return {};
    }),
    ListAudit: unary('ListAudit', (req: pb.ListAuditRequest__Output) => ({
      entries: access.listAudit({ since: req.since, user: req.user, limit: req.limit }).map((e) => ({ ...e, seq: e.seq })),
    })),
  };
}
