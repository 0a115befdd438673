// Shapes shared by every route: ids, paging, and the helpers that turn zod failures into 400s.
import { z } from 'zod';
import { HttpError, validationError } from './errors.js';

/** A positive integer that fits a JS number exactly: `1abc`, `1.5`, `-1`, `99999999999999999999` are refused. */
export const IdSchema = z
  .string()
  .regex(/^[1-9][0-9]{0,15}$/, 'must be a positive integer')
  .transform(Number)
  .refine(Number.isSafeInteger, 'must be a positive integer');

/**
 * Text without control characters or lone surrogates: names end up in lists, logs and terminals,
 * so such characters are refused rather than stored and echoed.
 */
export const PRINTABLE = /^[^\p{Cc}\p{Cs}]*$/u;

export const IdParamsSchema = z.object({ id: IdSchema });

/** An integer query parameter within bounds; absent means `fallback`. */
export const boundedIntQuery = (min: number, max: number, fallback: number) =>
  z.string().optional().transform((s, ctx) => {
    if (s === undefined) return fallback;
    const n = /^[0-9]{1,9}$/.test(s) ? Number(s) : NaN;
    if (!(n >= min && n <= max)) {
      ctx.addIssue({ code: 'custom', message: `must be an integer from ${min} to ${max}` });
      return z.NEVER;
    }
    return n;
  });

export const PagingShape = {
  page: boundedIntQuery(1, 1_000_000, 1),
  limit: boundedIntQuery(1, 100, 10),
};

export interface Page<T> {
  data: T[];
  meta: { page: number; limit: number; total: number };
}

/** The zod shape of a Page of `item`, for clients that check what a list route answered. */
export const pageOf = <T extends z.ZodType>(item: T) =>
  z.object({
    data: z.array(item),
    meta: z.object({ page: z.number().int(), limit: z.number().int(), total: z.number().int() }),
  });

export function parseParams<S extends z.ZodType>(schema: S, value: unknown): z.output<S> {
  const r = schema.safeParse(value);
  if (!r.success) throw validationError(r.error, 'params');
  return r.data;
}

export function parseQuery<S extends z.ZodType>(schema: S, value: unknown): z.output<S> {
  // `?a=1&a=2` arrives as an array; say so plainly rather than "expected string, received array".
  const repeated = Object.entries(value as Record<string, unknown>).filter(([, v]) => Array.isArray(v)).map(([k]) => k);
  if (repeated.length) {
    throw new HttpError(400, 'VALIDATION_ERROR', 'Invalid request query', repeated.slice(0, 20).map((field) => ({ field, message: 'must be given once' })));
  }
  const r = schema.safeParse(value);
  if (!r.success) throw validationError(r.error, 'query');
  return r.data;
}

export function parseBody<S extends z.ZodType>(schema: S, value: unknown): z.output<S> {
  const r = schema.safeParse(value);
  if (!r.success) throw validationError(r.error, 'body');
  return r.data;
}

const ID = /^[1-9][0-9]{0,15}$/;

/** IdParamsSchema's id, read without zod when it is well formed (zod reads, and refuses, the rest). */
export const parseId = (params: unknown): number => {
  const id = (params as { id?: unknown } | null)?.id;
  if (typeof id === 'string' && ID.test(id)) {
    const n = Number(id);
    if (Number.isSafeInteger(n)) return n;
  }
  return parseParams(IdParamsSchema, params).id;
};

/**
 * A parsed JSON object with every `required` key and no key outside `required` and `optional`:
 * what a strict schema lets through. For the fast paths that read the common body without zod
 * and leave anything else to it.
 */
export function hasOnlyKeys(value: unknown, required: readonly string[], optional: readonly string[] = []): value is Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value) || Object.getPrototypeOf(value) !== Object.prototype) return false;
  let found = 0;
  for (const key of Object.keys(value)) {
    if (required.includes(key)) found++;
    else if (!optional.includes(key)) return false;
  }
  return found === required.length;
}

/** An integer from `min` to `max` that a number schema with `.int()` (safe integers only) accepts. */
export const isIntFrom = (value: unknown, min: number, max: number): value is number =>
  Number.isSafeInteger(value) && (value as number) >= min && (value as number) <= max;
