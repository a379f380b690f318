/**
 * Loads agent.proto (AgentService) with @grpc/proto-loader, separately from the array's
 * services: the agent never needs them over this loader, and the array never loads this one.
 *
 * uint64 fields arrive as JavaScript numbers: the agent's byte counts are volume sizes and
 * progress, far below 2^53.
 */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { fileURLToPath } from 'node:url';

const PROTO_ROOT = fileURLToPath(new URL('../../proto/', import.meta.url));

let loaded: grpc.ServiceClientConstructor | undefined;

export function agentServiceClientConstructor(): grpc.ServiceClientConstructor {
  if (!loaded) {
    if (process.env.GRPC_VERBOSITY === undefined) grpc.setLogVerbosity(grpc.logVerbosity.NONE);
    const def = protoLoader.loadSync(['arraylab/v1/agent.proto'], { keepCase: false, longs: Number, enums: String, defaults: true, oneofs: true, includeDirs: [PROTO_ROOT] });
    const v1 = (grpc.loadPackageDefinition(def).arraylab as grpc.GrpcObject).v1 as grpc.GrpcObject;
    loaded = v1.AgentService as grpc.ServiceClientConstructor;
  }
  return loaded;
}

export function agentServiceDefinition(): grpc.ServiceDefinition {
  return agentServiceClientConstructor().service;
}
