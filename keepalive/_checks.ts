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
  // A plain object only: a Map, a Date or a class instance would read as
  // {} (no keys of its own), which widens a filter to everything.
  const prototype = typeof value === "object" && value !== null
    ? Object.getPrototypeOf(value)
    : undefined;
  if (prototype !== Object.prototype && prototype !== null) throw new TypeError(notObject);
  // Every key of its own, enumerable or not, symbols too: a misspelt one is
  // refused wherever it hides; and only its own values count, not inherited.
  const extra = Reflect.ownKeys(value as object).find((key) =>
    typeof key !== "string" || !(known as readonly string[]).includes(key)
  );
  if (extra !== undefined) throw new TypeError(unknown(String(extra)));
  const fields: Partial<Record<K, unknown>> = {};
  for (const key of known) {
    if (Object.hasOwn(value as object, key)) fields[key] = (value as Record<string, unknown>)[key];
  }
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
