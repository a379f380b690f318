/**
 * The one loader of the contract's .proto files (@grpc/proto-loader, at run time), with one set
 * of options for every service: the array's (array, copy, host affinity, tape) and the agent's.
 *
 * The .proto files sit next to this module: proto/ in the sources (vitest), dist/proto/ once
 * compiled (scripts/copy-assets.mjs copies them). All share the package arraylab.v1.
 */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { fileURLToPath } from 'node:url';

export const PROTO_ROOT = fileURLToPath(new URL('./', import.meta.url));
const PROTO_FILES = ['arraylab/v1/array.proto', 'arraylab/v1/copy.proto', 'arraylab/v1/affinity.proto', 'arraylab/v1/tape.proto', 'arraylab/v1/agent.proto'];

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

export function arrayServiceDefinition(): grpc.ServiceDefinition {
  return arrayServiceClientConstructor().service;
}

export function arrayServiceClientConstructor(): grpc.ServiceClientConstructor {
  return v1().ArrayService as grpc.ServiceClientConstructor;
}

export function copyServiceClientConstructor(): grpc.ServiceClientConstructor {
  return v1().CopyService as grpc.ServiceClientConstructor;
}

export function copyServiceDefinition(): grpc.ServiceDefinition {
  return copyServiceClientConstructor().service;
}

export function hostAffinityServiceClientConstructor(): grpc.ServiceClientConstructor {
  return v1().HostAffinityService as grpc.ServiceClientConstructor;
}

export function hostAffinityServiceDefinition(): grpc.ServiceDefinition {
  return hostAffinityServiceClientConstructor().service;
}

// ---- tape: TapeService (proto/arraylab/v1/tape.proto) ----

export function tapeServiceClientConstructor(): grpc.ServiceClientConstructor {
  return v1().TapeService as grpc.ServiceClientConstructor;
}

export function tapeServiceDefinition(): grpc.ServiceDefinition {
  return tapeServiceClientConstructor().service;
}

// ---- AgentService (proto/arraylab/v1/agent.proto): the host agent's own API ----

export function agentServiceClientConstructor(): grpc.ServiceClientConstructor {
  return v1().AgentService as grpc.ServiceClientConstructor;
}

export function agentServiceDefinition(): grpc.ServiceDefinition {
  return agentServiceClientConstructor().service;
}
