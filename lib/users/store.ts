// The only place with the user service's SQL (users; the signing keys and login failures are in
// auth.ts's stores beside it, on the same Db).
import { HttpError } from '../platform/errors.js';
import { isUniqueViolation, type Db } from '../platform/sql.js';
import type { Page } from '../platform/validation.js';
import type { CreateUser, ListUsersQuery, Role, UpdateUser, User, UserStats } from './schema.js';

interface UserRow {
  id: number;
  name: string;
  email: string;
  role: Role;
  created_at: string;
  updated_at: string;
}

const toUser = (r: UserRow): User => ({ id: r.id, name: r.name, email: r.email, role: r.role, createdAt: r.created_at, updatedAt: r.updated_at });

const emailTaken = () =>
  new HttpError(409, 'EMAIL_TAKEN', 'A user with this email already exists', [{ field: 'email', message: 'is already taken' }]);

/**
 * The UNIQUE index decides, not a prior SELECT: two racing creates (in one process or in two
 * instances on one PostgreSQL) cannot both pass it. SQLite: the column is COLLATE NOCASE;
 * PostgreSQL: a unique index on lower(email).
 */
function rethrowUnique(err: unknown): never {
  if (isUniqueViolation(err)) throw emailTaken();
  throw err;
}

/** A user to insert: the password already hashed. */
export type NewUser = Omit<CreateUser, 'password'> & { passwordHash?: string };
export type UserPatch = Omit<UpdateUser, 'password'> & { passwordHash?: string };

const COLUMNS = 'id, name, email, role, created_at, updated_at';

export function createUserStore(db: Db) {
  // The email comparison that uses each engine's unique index: SQLite's NOCASE column, PostgreSQL's
  // index on lower(email).
  const byEmail = db.engine === 'postgres' ? 'lower(email) = lower($1)' : 'email = $1';

  return {
    async list({ page, limit, role }: ListUsersQuery): Promise<Page<User>> {
      const filter = role ?? null;
      const rows = await db.all<UserRow>(
        `SELECT ${COLUMNS} FROM users WHERE (CAST($1 AS TEXT) IS NULL OR role = $1) ORDER BY id LIMIT $2 OFFSET $3`,
        [filter, limit, (page - 1) * limit],
      );
      const counted = await db.get<{ total: number }>(
        'SELECT count(*) AS total FROM users WHERE (CAST($1 AS TEXT) IS NULL OR role = $1)',
        [filter],
      );
      return { data: rows.map(toUser), meta: { page, limit, total: counted!.total } };
    },

    async get(id: number): Promise<User | undefined> {
      const row = await db.get<UserRow>(`SELECT ${COLUMNS} FROM users WHERE id = $1`, [id]);
      return row && toUser(row);
    },

    async create({ name, email, role, passwordHash }: NewUser): Promise<User> {
      try {
        const row = await db.get<UserRow>(
          `INSERT INTO users (name, email, role, password_hash, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $5) RETURNING ${COLUMNS}`,
          [name, email, role, passwordHash ?? null, new Date().toISOString()],
        );
        return toUser(row!);
      } catch (err) {
        rethrowUnique(err);
      }
    },

    /** undefined when there is no such user. */
    async update(id: number, patch: UserPatch): Promise<User | undefined> {
      try {
        const row = await db.get<UserRow>(
          `UPDATE users SET name = coalesce($2, name), email = coalesce($3, email), role = coalesce($4, role),
             password_hash = coalesce($5, password_hash), updated_at = $6
           WHERE id = $1 RETURNING ${COLUMNS}`,
          [id, patch.name ?? null, patch.email ?? null, patch.role ?? null, patch.passwordHash ?? null, new Date().toISOString()],
        );
        return row && toUser(row);
      } catch (err) {
        rethrowUnique(err);
      }
    },

    /** What a login checks; the hash never leaves the user service. The email matches in any case. */
    async credentials(email: string): Promise<{ id: number; role: Role; passwordHash: string | null } | undefined> {
      const row = await db.get<{ id: number; role: Role; password_hash: string | null }>(`SELECT id, role, password_hash FROM users WHERE ${byEmail}`, [email]);
      return row && { id: row.id, role: row.role, passwordHash: row.password_hash };
    },

    async setPasswordIfMissing(email: string, passwordHash: string): Promise<boolean> {
      const changed = await db.run(`UPDATE users SET password_hash = $2, updated_at = $3 WHERE ${byEmail} AND password_hash IS NULL`, [email, passwordHash, new Date().toISOString()]);
      return changed === 1;
    },

    async remove(id: number): Promise<boolean> {
      return (await db.run('DELETE FROM users WHERE id = $1', [id])) === 1;
    },

    async count(): Promise<number> {
      return (await db.get<{ total: number }>('SELECT count(*) AS total FROM users'))!.total;
    },

    async stats(): Promise<UserStats> {
      const { total, admins } = (await db.get<{ total: number; admins: number }>(
        "SELECT count(*) AS total, count(*) FILTER (WHERE role = 'admin') AS admins FROM users",
      ))!;
      return { service: 'user-service', totalUsers: total, adminUsers: admins, regularUsers: total - admins };
    },
  };
}

export type UserStore = ReturnType<typeof createUserStore>;
