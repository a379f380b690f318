/**
 * Loads the control API's .proto files at run time with @grpc/proto-loader.
 *
 * The path is relative to this module: emulator/api/ in the sources (vitest) and
 * dist/emulator/api/ once compiled sit two levels below proto/ and dist/proto/ respectively.
 * Each service's file is in PROTO_FILES; all share the package arraylab.v1.
 */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { fileURLToPath } from 'node:url';

export const PROTO_ROOT = fileURLToPath(new URL('../../proto/', import.meta.url));
const PROTO_FILES = ['arraylab/v1/array.proto', 'arraylab/v1/copy.proto', 'arraylab/v1/affinity.proto', 'arraylab/v1/tape.proto' /* tape: TapeService */];

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
  const v1 = (packageObject().arraylab as grpc.GrpcObject).v1 as grpc.GrpcObject;
  return v1.ArrayService as grpc.ServiceClientConstructor;
}

export function copyServiceClientConstructor(): grpc.ServiceClientConstructor {
  const v1 = (packageObject().arraylab as grpc.GrpcObject).v1 as grpc.GrpcObject;
  return v1.CopyService as grpc.ServiceClientConstructor;
}

export function copyServiceDefinition(): grpc.ServiceDefinition {
  return copyServiceClientConstructor().service;
}

export function hostAffinityServiceClientConstructor(): grpc.ServiceClientConstructor {
  const v1 = (packageObject().arraylab as grpc.GrpcObject).v1 as grpc.GrpcObject;
  return v1.HostAffinityService as grpc.ServiceClientConstructor;
}

export function hostAffinityServiceDefinition(): grpc.ServiceDefinition {
  return hostAffinityServiceClientConstructor().service;
}

// ---- tape: TapeService (proto/arraylab/v1/tape.proto) ----

export function tapeServiceClientConstructor(): grpc.ServiceClientConstructor {
  const v1 = (packageObject().arraylab as grpc.GrpcObject).v1 as grpc.GrpcObject;
  return v1.TapeService as grpc.ServiceClientConstructor;
}

export function tapeServiceDefinition(): grpc.ServiceDefinition {
  return tapeServiceClientConstructor().service;
}
