// The config schema of each entry file, and the variables each reads: for the tests that check a
// deployment's variables (Compose, Kubernetes) against what the processes take.
import assert from 'node:assert/strict';
import { z } from 'zod';
import { parseConfig } from '../../lib/platform/config.js';
import { GatewayConfigSchema } from '../../lib/gateway/config.js';
import { OrderConfigSchema } from '../../lib/orders/config.js';
import { ProductConfigSchema } from '../../lib/products/config.js';
import { UserConfigSchema } from '../../lib/users/config.js';

export const SCHEMAS: Record<string, z.ZodType> = {
  'gateway.ts': GatewayConfigSchema,
  'user-service.ts': UserConfigSchema,
  'product-service.ts': ProductConfigSchema,
  'order-service.ts': OrderConfigSchema,
};

/** How the image (deploy/Dockerfile) runs an entry file: its JavaScript from npm run build. */
export const builtCommand = (entry: string): string[] => ['node', `dist/${entry.replace(/\.ts$/, '.js')}`];

/** The entry file (a key of SCHEMAS) a container's command runs, if it runs one built. */
export const entryOfCommand = (command: string[] | undefined): string | undefined =>
  Object.keys(SCHEMAS).find((entry) => command?.includes(builtCommand(entry)[1]));

/** The object shape under a process's schema (its refinements and transforms peeled off). */
export function shapeOf(schema: z.ZodType): Record<string, z.ZodType> {
  let inner: z.ZodType = schema;
  while (!(inner instanceof z.ZodObject)) {
    assert.ok(inner instanceof z.ZodPipe, 'a config schema is an object, maybe refined or transformed');
    inner = inner.in as z.ZodType;
  }
  return inner.shape;
}

/** The keys a process's schema reads (zod objects drop every other key without a word). */
export function keysOf(schema: z.ZodType): Set<string> {
  return new Set(Object.keys(shapeOf(schema)));
}

/**
 * Asserts that every variable `env` sets is one `entry` reads, with a value its schema takes,
 * and returns the parsed configuration.
 */
export function assertTakenBy(entry: string, env: Record<string, string>, label: string): Record<string, unknown> {
  const unread = Object.keys(env).filter((key) => !keysOf(SCHEMAS[entry]).has(key));
  let parseError = '';
  let config: Record<string, unknown> = {};
  try {
    config = parseConfig(SCHEMAS[entry], env) as Record<string, unknown>;
  } catch (err) {
    parseError = (err as Error).message;
  }
  assert.deepEqual({ unread, parseError }, { unread: [], parseError: '' }, label);
  return config;
}
