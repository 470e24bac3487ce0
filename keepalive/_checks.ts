/**
 * # Reading a caller's arguments once, and saying what was wrong
 *
 * Every public call checks its arguments before it does anything: an
 * options object is read field by field, once (a getter is called once), so
 * what was checked is what is used; a key the call does not take is a
 * mistake to report, not one to ignore (a misspelt filter key would widen
 * the filter to every connection).
 *
 * @module
 */

/**
 * The fields `known` of an options object, each read exactly once, into a
 * plain object. Throws a `TypeError` with `notObject` for anything but an
 * object, and with `unknown(key)` for an own key it does not take.
 */
export function readFields<K extends string>(
  value: unknown,
  known: readonly K[],
  notObject: string,
  unknown: (key: string) => string,
): Partial<Record<K, unknown>> {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new TypeError(notObject);
  }
  const extra = Object.keys(value).find((key) => !(known as readonly string[]).includes(key));
  if (extra !== undefined) throw new TypeError(unknown(extra));
  const fields: Partial<Record<K, unknown>> = {};
  for (const key of known) fields[key] = (value as Record<string, unknown>)[key];
  return fields;
}

/**
 * A value as an error message shows it: strings quoted, numbers as they
 * are, anything else by its kind (never a function's source).
 */
export function shown(value: unknown): string {
  if (typeof value === "string") return JSON.stringify(value);
  if (typeof value === "number" || typeof value === "boolean" || value === undefined) {
    return String(value);
  }
  return typeName(value);
}

/** What kind of value this is, for a message: `null`, `an array`, `object`, `number`... */
export function typeName(value: unknown): string {
  return value === null ? "null" : Array.isArray(value) ? "an array" : typeof value;
}

/** Whether `value` is a TCP port a socket can have: an integer from 1 to 65535. */
export function isPort(value: unknown): value is number {
  return Number.isInteger(value) && (value as number) >= 1 && (value as number) <= 65535;
}
