// Each user's token version: the `ver` claim of the tokens issued to them. Raising it (a role or
// password change, a logout) makes every token issued before worthless wherever it is verified,
// within the verifiers' TOKEN_VERSION_CACHE_MS; a deleted user's tokens have no version to match.
import type { Db } from '../platform/sql.js';

export function createSessionStore(db: Db) {
  const byEmail = db.engine === 'postgres' ? 'lower(email) = lower($1)' : 'email = $1';
  return {
    /** The user's current token version; undefined when there is no such user. */
    async version(id: number): Promise<number | undefined> {
      const row = await db.get<{ token_version: number | string }>('SELECT token_version FROM users WHERE id = $1', [id]);
      return row && Number(row.token_version);
    },

    /** The id and token version of the user with `email`, read before a login reads its credentials. */
    async versionByEmail(email: string): Promise<{ id: number; version: number } | undefined> {
      const row = await db.get<{ id: number | string; token_version: number | string }>(`SELECT id, token_version FROM users WHERE ${byEmail}`, [email]);
      return row && { id: Number(row.id), version: Number(row.token_version) };
    },

    /** Ends every token of user `id` issued so far; false when there is no such user. */
    async revokeAll(id: number): Promise<boolean> {
      return (await db.run('UPDATE users SET token_version = token_version + 1 WHERE id = $1', [id])) === 1;
    },
  };
}
export type SessionStore = ReturnType<typeof createSessionStore>;

/**
 * `credentials` with the user's token version, for the token a login issues. The version is read
 * first: a role change raises it after writing the role, so a login racing one either reads the old
 * version (its token is refused once the change is done) or the new role.
 */
export function withTokenVersion<C extends { id: number }>(sessions: SessionStore, credentials: (email: string) => Promise<C | undefined>) {
  return async (email: string): Promise<(C & { tokenVersion: number }) | undefined> => {
    const seen = await sessions.versionByEmail(email);
    const found = await credentials(email);
    if (!found) return undefined;
    // Another row under the same email (deleted and made again between the two reads): version 0
    // of a new user cannot match an older token of it, and a token of the old one has no account.
    return { ...found, tokenVersion: seen?.id === found.id ? seen.version : 0 };
  };
}
