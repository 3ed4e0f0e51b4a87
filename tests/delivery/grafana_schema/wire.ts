// Grafana's TypeScript types use string enums (FieldColorModeId.Fixed = "fixed");
// dashboard JSON holds their values.  Wire<T> is T with each string enum
// replaced by the union of its values, so a JSON literal can satisfy it.
export type Wire<T> = T extends string
  ? `${T}`
  : T extends readonly (infer U)[]
    ? Wire<U>[]
    : T extends object
      ? { [K in keyof T]: Wire<T[K]> }
      : T;
