// The OpenAPI 3.1 document of a process, built from the same zod schemas that check its requests
// (zod's JSON Schema output is draft 2020-12, the dialect OpenAPI 3.1 uses). Each service lists its
// routes once, as ApiRoutes; the document is built from that list at start and served as is.
import type { RequestHandler } from 'express';
import { z } from 'zod';

type ApiMethod = 'get' | 'post' | 'put' | 'patch' | 'delete';

interface ApiResponse {
  description: string;
  /** JSON body; errors (status >= 400) default to the contract's error body. */
  body?: z.ZodType;
  /** Not JSON: the media type of the body (e.g. Prometheus text). */
  mediaType?: string;
}

export interface ApiRoute {
  method: ApiMethod;
  /** The Express path as the router registers it (`/users/:id`); shown as `/users/{id}`. */
  path: string;
  summary: string;
  /** Path parameters; one left out is a plain string. */
  params?: z.ZodObject;
  query?: z.ZodObject;
  headers?: Record<string, { schema: z.ZodType; description: string }>;
  body?: z.ZodType;
  responses: Record<number, ApiResponse>;
}

/** The contract's error body, answered for every status >= 400. */
const ErrorBodySchema = z.object({
  error: z.string(),
  code: z.string().describe('machine-readable, e.g. VALIDATION_ERROR'),
  details: z.array(z.object({ field: z.string(), message: z.string() })).optional(),
  traceId: z.string(),
}).meta({ description: 'Every error, whatever produced it.' });

type JsonSchema = Record<string, unknown>;

function jsonSchema(schema: z.ZodType, io: 'input' | 'output'): JsonSchema {
  // Refinements and transforms have no JSON Schema form: the shape before them is what is shown.
  const { $schema: _dialect, ...rest } = z.toJSONSchema(schema, { io, unrepresentable: 'any' }) as JsonSchema;
  return rest;
}

/** `/users/:id` -> `/users/{id}` */
export const openApiPath = (expressPath: string): string => expressPath.replace(/:(\w+)/g, '{$1}');

function operation(route: ApiRoute): JsonSchema {
  const parameters: JsonSchema[] = [];
  for (const [, name] of route.path.matchAll(/:(\w+)/g)) {
    const field = route.params?.shape[name] as z.ZodType | undefined;
    parameters.push({ name, in: 'path', required: true, schema: field ? jsonSchema(field, 'input') : { type: 'string' } });
  }
  for (const [name, field] of Object.entries(route.query?.shape ?? {}) as Array<[string, z.ZodType]>) {
    parameters.push({ name, in: 'query', required: !field.safeParse(undefined).success, schema: jsonSchema(field, 'input') });
  }
  for (const [name, { schema, description }] of Object.entries(route.headers ?? {})) {
    parameters.push({ name, in: 'header', required: !schema.safeParse(undefined).success, description, schema: jsonSchema(schema, 'input') });
  }
  const responses: Record<string, JsonSchema> = {};
  for (const [status, response] of Object.entries(route.responses)) {
    const body = response.body ?? (Number(status) >= 400 ? ErrorBodySchema : undefined);
    const content = response.mediaType
      ? { [response.mediaType]: { schema: { type: 'string' } } }
      : body === ErrorBodySchema
        ? { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } }
        : body
          ? { 'application/json': { schema: jsonSchema(body, 'output') } }
          : undefined;
    responses[status] = content ? { description: response.description, content } : { description: response.description };
  }
  return {
    summary: route.summary,
    ...(parameters.length ? { parameters } : {}),
    ...(route.body ? { requestBody: { required: true, content: { 'application/json': { schema: jsonSchema(route.body, 'input') } } } } : {}),
    responses,
  };
}

export interface OpenApiInfo {
  title: string;
  version: string;
  description?: string;
}

/** An OpenAPI 3.1 document of `routes`. Two routes with one method and path are a mistake: it throws. */
export function buildOpenApi(info: OpenApiInfo, routes: readonly ApiRoute[]): JsonSchema {
  const paths: Record<string, Record<string, JsonSchema>> = {};
  for (const route of routes) {
    const item = (paths[openApiPath(route.path)] ??= {});
    if (item[route.method]) throw new Error(`OpenAPI: ${route.method.toUpperCase()} ${route.path} is listed twice`);
    item[route.method] = operation(route);
  }
  return {
    openapi: '3.1.0',
    info,
    paths,
    components: { schemas: { Error: jsonSchema(ErrorBodySchema, 'output') } },
  };
}

/** GET /openapi.json: the document, serialised once. */
export function openApiHandler(document: JsonSchema): RequestHandler {
  const body = JSON.stringify(document);
  return (_req, res) => {
    res.type('application/json').send(body);
  };
}
