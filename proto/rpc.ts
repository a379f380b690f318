/**
 * Typed calls on the generated client interfaces (proto/gen/): a method name picks the request
 * and response types, so a misspelt method or a wrong field is a build error, not a call that
 * fails at run time. The clients (ArrayClient, the agent's AgentClient) add deadlines, metadata
 * and their error messages on top.
 */
import type * as grpc from '@grpc/grpc-js';

/*
 * The unary and server-streaming methods of a generated client interface, with their types,
 * read from each method's last overload ((argument, callback) and (argument, options)). `any`
 * only in the patterns: a parameter type every method matches.
 */
// biome-ignore lint/suspicious/noExplicitAny: a pattern every unary method matches
type AnyUnary = (argument: any, callback: grpc.requestCallback<any>) => grpc.ClientUnaryCall;
// biome-ignore lint/suspicious/noExplicitAny: a pattern every streaming method matches
type AnyStream = (argument: any, options?: grpc.CallOptions) => grpc.ClientReadableStream<any>;

export type UnaryMethod<C> = { [K in keyof C & string]: C[K] extends AnyUnary ? K : never }[keyof C & string];
export type RequestOf<C, K extends keyof C> = C[K] extends (argument: infer A, callback: infer _) => grpc.ClientUnaryCall ? A : never;
export type ResponseOf<C, K extends keyof C> = C[K] extends (argument: infer _, callback: grpc.requestCallback<infer R>) => grpc.ClientUnaryCall ? R : never;
export type StreamMethod<C> = { [K in keyof C & string]: C[K] extends AnyStream ? K : never }[keyof C & string];
export type StreamRequestOf<C, K extends keyof C> = C[K] extends (argument: infer A, options?: grpc.CallOptions) => grpc.ClientReadableStream<unknown>
  ? A
  : never;
export type StreamMessageOf<C, K extends keyof C> = C[K] extends (argument: infer _, options?: grpc.CallOptions) => grpc.ClientReadableStream<infer M>
  ? M
  : never;

/** A unary call; rejects with grpc-js's ServiceError. */
export function unaryCall<C extends grpc.Client, K extends UnaryMethod<C>>(
  client: C,
  method: K,
  req: RequestOf<C, K>,
  metadata: grpc.Metadata,
  options: grpc.CallOptions,
): Promise<ResponseOf<C, K>> {
  type Fn = (req: RequestOf<C, K>, md: grpc.Metadata, o: grpc.CallOptions, cb: grpc.requestCallback<ResponseOf<C, K>>) => grpc.ClientUnaryCall;
  const fn = client[method] as unknown as Fn;
  return new Promise((resolve, reject) => {
    fn.call(client, req, metadata, options, (err, res) => (err ? reject(err) : resolve(res!)));
  });
}

/** Opens a server-streaming call. */
export function openStream<C extends grpc.Client, K extends StreamMethod<C>>(
  client: C,
  method: K,
  req: StreamRequestOf<C, K>,
  metadata: grpc.Metadata,
): grpc.ClientReadableStream<StreamMessageOf<C, K>> {
  type Fn = (req: StreamRequestOf<C, K>, md: grpc.Metadata) => grpc.ClientReadableStream<StreamMessageOf<C, K>>;
  return (client[method] as unknown as Fn).call(client, req, metadata);
}
