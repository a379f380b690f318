/**
 * The one loader of the contract's .proto files (@grpc/proto-loader, at run time), with one set
 * of options for every service: the array's (array, copy, host affinity, tape, fault) and the agent's.
 *
 * The .proto files sit next to this module: proto/ in the sources (vitest), dist/proto/ once
 * compiled (scripts/copy-assets.mjs copies them). All share the package arraylab.v1.
 */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { fileURLToPath } from 'node:url';
import type * as pb from './gen/index.js';

export const PROTO_ROOT = fileURLToPath(new URL('./', import.meta.url));
const PROTO_FILES = [
  'arraylab/v1/array.proto',
  'arraylab/v1/copy.proto',
  'arraylab/v1/affinity.proto',
  'arraylab/v1/tape.proto',
  'arraylab/v1/agent.proto',
  'arraylab/v1/fault.proto',
  'arraylab/v1/remote.proto',
  'arraylab/v1/access.proto',
  'arraylab/v1/events.proto',
];

/**
 * uint64 fields arrive as decimal strings (longs: String) so a value of 2^53 or more is caught
 * by toByteCount rather than silently rounded; numbers are accepted when sending.
 */
const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: false,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [PROTO_ROOT],
};

let loaded: grpc.GrpcObject | undefined;

function v1(): grpc.GrpcObject {
  return (packageObject().arraylab as grpc.GrpcObject).v1 as grpc.GrpcObject;
}

function packageObject(): grpc.GrpcObject {
  if (!loaded) {
    // grpc-js writes its own lines to stderr (e.g. "E No address added..."); our errors already
    // say what went wrong, so keep it quiet unless GRPC_VERBOSITY asks for it.
    if (process.env.GRPC_VERBOSITY === undefined) grpc.setLogVerbosity(grpc.logVerbosity.NONE);
    loaded = grpc.loadPackageDefinition(protoLoader.loadSync(PROTO_FILES, LOADER_OPTIONS));
  }
  return loaded;
}

/** A generated client interface's constructor, and its service's definition for servers. */
export type ClientConstructor<C extends grpc.Client> = (new (
  address: string,
  credentials: grpc.ChannelCredentials,
  options?: grpc.ClientOptions,
) => C) & { service: grpc.ServiceDefinition };

function service<C extends grpc.Client>(name: string): ClientConstructor<C> {
  return v1()[name] as unknown as ClientConstructor<C>;
}

export const arrayServiceClientConstructor = (): ClientConstructor<pb.ArrayServiceClient> => service('ArrayService');
export const copyServiceClientConstructor = (): ClientConstructor<pb.CopyServiceClient> => service('CopyService');
export const hostAffinityServiceClientConstructor = (): ClientConstructor<pb.HostAffinityServiceClient> => service('HostAffinityService');
export const tapeServiceClientConstructor = (): ClientConstructor<pb.TapeServiceClient> => service('TapeService');
export const agentServiceClientConstructor = (): ClientConstructor<pb.AgentServiceClient> => service('AgentService');
export const faultServiceClientConstructor = (): ClientConstructor<pb.FaultServiceClient> => service('FaultService');
export const remoteServiceClientConstructor = (): ClientConstructor<pb.RemoteServiceClient> => service('RemoteService');
export const remoteCopyServiceClientConstructor = (): ClientConstructor<pb.RemoteCopyServiceClient> => service('RemoteCopyService');
export const accessServiceClientConstructor = (): ClientConstructor<pb.AccessServiceClient> => service('AccessService');
export const eventServiceClientConstructor = (): ClientConstructor<pb.EventServiceClient> => service('EventService');

export const arrayServiceDefinition = (): grpc.ServiceDefinition => arrayServiceClientConstructor().service;
export const copyServiceDefinition = (): grpc.ServiceDefinition => copyServiceClientConstructor().service;
export const hostAffinityServiceDefinition = (): grpc.ServiceDefinition => hostAffinityServiceClientConstructor().service;
export const tapeServiceDefinition = (): grpc.ServiceDefinition => tapeServiceClientConstructor().service;
export const agentServiceDefinition = (): grpc.ServiceDefinition => agentServiceClientConstructor().service;
export const faultServiceDefinition = (): grpc.ServiceDefinition => faultServiceClientConstructor().service;
export const remoteServiceDefinition = (): grpc.ServiceDefinition => remoteServiceClientConstructor().service;
export const remoteCopyServiceDefinition = (): grpc.ServiceDefinition => remoteCopyServiceClientConstructor().service;
export const accessServiceDefinition = (): grpc.ServiceDefinition => accessServiceClientConstructor().service;
export const eventServiceDefinition = (): grpc.ServiceDefinition => eventServiceClientConstructor().service;

/**
 * Adds a service to a server with handlers typed by its generated interface (the generated
 * interfaces have no index signature, which grpc-js's untyped one wants).
 */
export function addService<H extends object>(server: grpc.Server, definition: grpc.ServiceDefinition, handlers: H): void {
  server.addService(definition, handlers as unknown as grpc.UntypedServiceImplementation);
}
