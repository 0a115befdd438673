// The one rule for a Map that must not grow without bound: the oldest entry makes room.

/** Sets `key` in `map`, first forgetting the entry set longest ago when `map` already holds `max`. */
export function setBounded<K, V>(map: Map<K, V>, key: K, value: V, max: number): void {
  if (map.size >= max && !map.has(key)) map.delete(map.keys().next().value as K);
  map.set(key, value);
}
