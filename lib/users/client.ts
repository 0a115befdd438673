// The typed client other processes use to call the user service.
import type { ServiceClient } from '../platform/service-client.js';
import { checkedBody, type CallOptions } from '../platform/typed-client.js';
import { UserSchema, UserStatsSchema, type User, type UserStats } from './schema.js';

export interface UsersClient {
  /**
   * null when the user service answers 404; any other failure throws as ServiceClient does. Pass the
   * caller's Authorization (`asCaller`) so that the user service applies its rules to the caller.
   */
  getUser(id: number, options?: CallOptions): Promise<User | null>;
  stats(options?: CallOptions): Promise<UserStats>;
}

export function createUsersClient(client: ServiceClient): UsersClient {
  return {
    async getUser(id, options) {
      const res = await client.get<unknown>(`/users/${id}`, { ...options, accept: [404] });
      return res.status === 404 ? null : checkedBody(client, UserSchema, res);
    },
    async stats(options) {
      return checkedBody(client, UserStatsSchema, await client.get<unknown>('/stats', options));
    },
  };
}
