// The user service's shapes: what clients may send and what it answers.
import { z } from 'zod';
import { PagingShape, PRINTABLE } from '../platform/validation.js';

const ROLES = ['admin', 'user'] as const;
const RoleSchema = z.enum(ROLES, { message: 'must be "admin" or "user"' });
export type Role = z.infer<typeof RoleSchema>;

const NameSchema = z.string().trim().min(2, 'must be 2 to 100 characters').max(100, 'must be 2 to 100 characters')
  .regex(PRINTABLE, 'must not contain control characters');

// Kept as the client wrote it (trimmed); uniqueness ignores case (the column is COLLATE NOCASE,
// enough because the format below is ASCII only).
const EmailSchema = z.string().trim().max(254, 'must be at most 254 characters').pipe(z.email('must be a valid email'));

// Never trimmed or otherwise changed: it is hashed as sent.
const PasswordSchema = z.string().min(8, 'must be 8 to 128 characters').max(128, 'must be 8 to 128 characters');

export const CreateUserSchema = z.strictObject({
  name: NameSchema,
  email: EmailSchema,
  role: RoleSchema.default('user'),
  password: PasswordSchema.optional(),
});
export type CreateUser = z.infer<typeof CreateUserSchema>;

export const UpdateUserSchema = z
  .strictObject({ name: NameSchema.optional(), email: EmailSchema.optional(), role: RoleSchema.optional(), password: PasswordSchema.optional() })
  .refine((v) => Object.keys(v).length > 0, 'must contain at least one of name, email, role, password');
export type UpdateUser = z.infer<typeof UpdateUserSchema>;

export const LoginSchema = z.strictObject({
  email: z.string().trim().min(1, 'is required').max(254, 'must be at most 254 characters').regex(PRINTABLE, 'must not contain control characters'),
  password: z.string().min(1, 'is required').max(1024, 'is too long'),
});

export const ListUsersQuerySchema = z.strictObject({ ...PagingShape, role: RoleSchema.optional() });
export type ListUsersQuery = z.infer<typeof ListUsersQuerySchema>;

/** A user as the API answers it. Loose: clients keep fields added later and pass them on. */
export const UserSchema = z.looseObject({
  id: z.number().int().positive(),
  name: z.string(),
  email: z.string(),
  role: RoleSchema,
  createdAt: z.string(),
  updatedAt: z.string(),
});
export type User = z.infer<typeof UserSchema>;

export const UserStatsSchema = z.looseObject({
  service: z.literal('user-service'),
  totalUsers: z.number().int(),
  adminUsers: z.number().int(),
  regularUsers: z.number().int(),
});
export type UserStats = z.infer<typeof UserStatsSchema>;
