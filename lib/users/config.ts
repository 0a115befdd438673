import { z } from 'zod';
import { portVar, serviceShape } from '../platform/config.js';

export const UserConfigSchema = z.object({ ...serviceShape, PORT: portVar(3011) });
