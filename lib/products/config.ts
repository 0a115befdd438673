import { z } from 'zod';
import { portVar, serviceShape } from '../platform/config.js';

export const ProductConfigSchema = z.object({ ...serviceShape, PORT: portVar(3012) });
