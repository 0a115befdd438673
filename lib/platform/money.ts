// Money is a number of dollars with at most 2 decimals on the wire and integer cents everywhere else.

/** Exact for any number with at most 2 decimals: n / 100 is the double nearest to the decimal. */
export const toCents = (price: number): number => Math.round(price * 100);
export const fromCents = (cents: number): number => cents / 100;
