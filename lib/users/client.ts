// The typed client other processes use to call the user service.
import { type ServiceClient, UpstreamUnavailableError } from '../platform/service-client.js';
import { UserSchema, type User } from './schema.js';

export type { User };

export interface UsersClient {
  /**
   * null when the user service answers 404; any other failure throws as ServiceClient does.
   * `authorization`: the caller's header, passed on so that the user service applies its rules to
   * the caller (a user sees only itself).
   */
  getUser(id: number, authorization?: string): Promise<User | null>;
}

export function createUsersClient(client: ServiceClient): UsersClient {
  return {
    async getUser(id, authorization) {
      const res = await client.get<unknown>(`/users/${id}`, { accept: [404], ...(authorization === undefined ? {} : { headers: { authorization } }) });
      if (res.status === 404) return null;
      const parsed = UserSchema.safeParse(res.body);
      if (!parsed.success) throw new UpstreamUnavailableError(client.name, 'bad_response', res.status);
      return parsed.data;
    },
  };
}
