// The only place with the user service's SQL.
import Database from 'better-sqlite3';
import type { Db } from '../platform/db.js';
import { HttpError } from '../platform/errors.js';
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

/** The UNIQUE index decides, not a prior SELECT: two racing creates cannot both pass it. */
function rethrowUnique(err: unknown): never {
  if (err instanceof Database.SqliteError && err.code === 'SQLITE_CONSTRAINT_UNIQUE') throw emailTaken();
  throw err;
}

/** A user to insert: the password already hashed. */
export type NewUser = Omit<CreateUser, 'password'> & { passwordHash?: string };
export type UserPatch = Omit<UpdateUser, 'password'> & { passwordHash?: string };

export function createUserStore(db: Db) {
  const COLUMNS = 'id, name, email, role, created_at, updated_at';
  const listStmt = db.prepare<{ role: Role | null; limit: number; offset: number }, UserRow>(
    `SELECT ${COLUMNS} FROM users WHERE (@role IS NULL OR role = @role) ORDER BY id LIMIT @limit OFFSET @offset`,
  );
  const countStmt = db.prepare<{ role: Role | null }, { total: number }>(
    'SELECT count(*) AS total FROM users WHERE (@role IS NULL OR role = @role)',
  );
  const getStmt = db.prepare<[number], UserRow>(`SELECT ${COLUMNS} FROM users WHERE id = ?`);
  const insertStmt = db.prepare<{ name: string; email: string; role: Role; passwordHash: string | null; now: string }, UserRow>(
    `INSERT INTO users (name, email, role, password_hash, created_at, updated_at) VALUES (@name, @email, @role, @passwordHash, @now, @now) RETURNING ${COLUMNS}`,
  );
  const updateStmt = db.prepare<{ id: number; name: string | null; email: string | null; role: Role | null; passwordHash: string | null; now: string }, UserRow>(
    `UPDATE users SET name = coalesce(@name, name), email = coalesce(@email, email), role = coalesce(@role, role),
       password_hash = coalesce(@passwordHash, password_hash), updated_at = @now
     WHERE id = @id RETURNING ${COLUMNS}`,
  );
  const credentialsStmt = db.prepare<[string], { id: number; role: Role; password_hash: string | null }>(
    'SELECT id, role, password_hash FROM users WHERE email = ?',
  );
  const setMissingPasswordStmt = db.prepare<[string, string, string]>(
    'UPDATE users SET password_hash = ?, updated_at = ? WHERE email = ? AND password_hash IS NULL',
  );
  const deleteStmt = db.prepare<[number]>('DELETE FROM users WHERE id = ?');
  const statsStmt = db.prepare<[], { total: number; admins: number }>(
    "SELECT count(*) AS total, coalesce(sum(role = 'admin'), 0) AS admins FROM users",
  );

  return {
    list({ page, limit, role }: ListUsersQuery): Page<User> {
      const filter = { role: role ?? null };
      const rows = listStmt.all({ ...filter, limit, offset: (page - 1) * limit });
      return { data: rows.map(toUser), meta: { page, limit, total: countStmt.get(filter)!.total } };
    },

    get(id: number): User | undefined {
      const row = getStmt.get(id);
      return row && toUser(row);
    },

    create({ name, email, role, passwordHash }: NewUser): User {
      try {
        return toUser(insertStmt.get({ name, email, role, passwordHash: passwordHash ?? null, now: new Date().toISOString() })!);
      } catch (err) {
        rethrowUnique(err);
      }
    },

    /** undefined when there is no such user. */
    update(id: number, patch: UserPatch): User | undefined {
      try {
        const row = updateStmt.get({
          id, name: patch.name ?? null, email: patch.email ?? null, role: patch.role ?? null, passwordHash: patch.passwordHash ?? null, now: new Date().toISOString(),
        });
        return row && toUser(row);
      } catch (err) {
        rethrowUnique(err);
      }
    },

    /** What a login checks; the hash never leaves the user service. */
    credentials(email: string): { id: number; role: Role; passwordHash: string | null } | undefined {
      const row = credentialsStmt.get(email);
      return row && { id: row.id, role: row.role, passwordHash: row.password_hash };
    },

    setPasswordIfMissing(email: string, passwordHash: string): boolean {
      return setMissingPasswordStmt.run(passwordHash, new Date().toISOString(), email).changes === 1;
    },

    remove(id: number): boolean {
      return deleteStmt.run(id).changes === 1;
    },

    count(): number {
      return statsStmt.get()!.total;
    },

    stats(): UserStats {
      const { total, admins } = statsStmt.get()!;
      return { service: 'user-service', totalUsers: total, adminUsers: admins, regularUsers: total - admins };
    },
  };
}

export type UserStore = ReturnType<typeof createUserStore>;
