// The typed client other processes use to call the user service.
import type { z } from 'zod';
import { type RequestOptions, type ServiceClient, UpstreamUnavailableError } from '../platform/service-client.js';
import { UserSchema, UserStatsSchema, type User, type UserStats } from './schema.js';

export type { User };

/** What a call may carry: a signal that gives up on it (a breaker's timeout, a client gone). */
type CallOptions = Pick<RequestOptions, 'signal'>;

export interface UsersClient {
  /** null when the user service answers 404; any other failure throws as ServiceClient does. */
  getUser(id: number, options?: CallOptions): Promise<User | null>;
  stats(options?: CallOptions): Promise<UserStats>;
}

export function createUsersClient(client: ServiceClient): UsersClient {
  const parse = <T>(schema: z.ZodType<T>, body: unknown, status: number): T => {
    const parsed = schema.safeParse(body);
    if (!parsed.success) throw new UpstreamUnavailableError(client.name, 'bad_response', status);
    return parsed.data;
  };
  return {
    async getUser(id, options) {
      const res = await client.get<unknown>(`/users/${id}`, { accept: [404], signal: options?.signal });
      return res.status === 404 ? null : parse(UserSchema, res.body, res.status);
    },
    async stats(options) {
      const res = await client.get<unknown>('/stats', { signal: options?.signal });
      return parse(UserStatsSchema, res.body, res.status);
    },
  };
}
