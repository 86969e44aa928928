// A validating JSON reader over raw bytes: skips values without building them, decodes only the
// strings it is asked for. Accepts exactly what Python's json.loads accepts on UTF-8 input,
// except NaN/Infinity literals, lone surrogate escapes and nesting deeper than MAX_DEPTH: those
// are reported as `unsupported` so the caller hands the request to the brain (which answers as
// the ext_proc path does) instead of guessing.

export const MAX_DEPTH = 64;
// Strings at least this long (in the body) are scanned once per request, then looked up.
const LONG_STRING = 1024;

export const enum Kind { Invalid = 0, Object = 1, Array = 2, String = 3, Number = 4, True = 5, False = 6, Null = 7 }

/** An object member: its key's span (decoded only when asked) and its value's span. */
export class Field {
  private decoded: string | null = null;

  constructor(private json: Json, private keyStart: i32, private keyEnd: i32, private escaped: bool, public start: i32, public end: i32) {}

  get key(): string {
    let key = this.decoded;
    if (key == null) {
      key = this.json.decodeString(this.keyStart, this.keyEnd);
      this.decoded = key;
    }
    return key;
  }

  /** Whether the key is `name` (ASCII): a plain key is compared in place, without a string. */
  is(name: string): bool {
    if (this.escaped) return this.key == name;
    const n = name.length;
    if (this.keyEnd - this.keyStart - 2 != n) return false;
    const json = this.json;
    const first = this.keyStart + 1;
    for (let i = 0; i < n; i++) {
      if (json.at(first + i) != <u32>name.charCodeAt(i)) return false;
    }
    return true;
  }
}

export class Json {
  unsupported: bool = false; // valid for Python but not decided here, or invalid: escalate
  nonAscii: bool = false; // a string decodedSize() measured holds a character >= U+0080
  private long: Map<i32, i64> | null = null; // long string start -> end << 1 | plain
  private plain: bool = true; // the last scan met neither an escape nor a non-ASCII byte
  private escapeEnd: i32 = 0; // where the escape codePoint() read ends
  lastEnd: i32 = 0; // where the object fields() read ended
  constructor(public data: usize, public len: i32) {}

  at(pos: i32): u32 {
    return <u32>load<u8>(this.data + <usize>pos);
  }

  ws(pos: i32): i32 {
    while (pos < this.len) {
      const c = this.at(pos);
      if (c != 0x20 && c != 0x0a && c != 0x0d && c != 0x09) break;
      pos++;
    }
    return pos;
  }

  kind(pos: i32): Kind {
    if (pos >= this.len) return Kind.Invalid;
    const c = this.at(pos);
    if (c == 0x7b) return Kind.Object;
    if (c == 0x5b) return Kind.Array;
    if (c == 0x22) return Kind.String;
    if (c == 0x2d || (c >= 0x30 && c <= 0x39)) return Kind.Number;
    if (c == 0x74) return Kind.True;
    if (c == 0x66) return Kind.False;
    if (c == 0x6e) return Kind.Null;
    return Kind.Invalid;
  }

  private literal(pos: i32, text: string): i32 {
    const n = text.length;
    if (pos + n > this.len) return -1;
    for (let i = 0; i < n; i++) {
      if (this.at(pos + i) != <u32>text.charCodeAt(i)) return -1;
    }
    return pos + n;
  }

  /** End of the value starting at pos (no leading whitespace), or -1. */
  skipValue(pos: i32, depth: i32): i32 {
    const kind = this.kind(pos);
    if (kind == Kind.String) return this.skipString(pos);
    if (kind == Kind.Number) return this.skipNumber(pos);
    if (kind == Kind.True) return this.literal(pos, "true");
    if (kind == Kind.False) return this.literal(pos, "false");
    if (kind == Kind.Null) return this.literal(pos, "null");
    if (depth >= MAX_DEPTH) { this.unsupported = true; return -1; }
    if (kind == Kind.Object) return this.skipObject(pos, depth + 1);
    if (kind == Kind.Array) return this.skipArray(pos, depth + 1);
    this.unsupported = true; // NaN, Infinity or garbage
    return -1;
  }

  private skipObject(pos: i32, depth: i32): i32 {
    pos = this.ws(pos + 1);
    if (pos < this.len && this.at(pos) == 0x7d) return pos + 1;
    while (true) {
      if (this.kind(pos) != Kind.String) return -1;
      pos = this.skipString(pos);
      if (pos < 0) return -1;
      pos = this.ws(pos);
      if (pos >= this.len || this.at(pos) != 0x3a) return -1;
      pos = this.ws(pos + 1);
      pos = this.skipValue(pos, depth);
      if (pos < 0) return -1;
      pos = this.ws(pos);
      if (pos >= this.len) return -1;
      const c = this.at(pos);
      if (c == 0x7d) return pos + 1;
      if (c != 0x2c) return -1;
      pos = this.ws(pos + 1);
    }
  }

  private skipArray(pos: i32, depth: i32): i32 {
    pos = this.ws(pos + 1);
    if (pos < this.len && this.at(pos) == 0x5d) return pos + 1;
    while (true) {
      pos = this.skipValue(pos, depth);
      if (pos < 0) return -1;
      pos = this.ws(pos);
      if (pos >= this.len) return -1;
      const c = this.at(pos);
      if (c == 0x5d) return pos + 1;
      if (c != 0x2c) return -1;
      pos = this.ws(pos + 1);
    }
  }

  skipNumber(pos: i32): i32 {
    if (this.at(pos) == 0x2d) pos++;
    if (pos >= this.len) return -1;
    let c = this.at(pos);
    if (c == 0x30) {
      pos++;
    } else if (c >= 0x31 && c <= 0x39) {
      while (pos < this.len && this.at(pos) >= 0x30 && this.at(pos) <= 0x39) pos++;
    } else {
      this.unsupported = true; // -Infinity
      return -1;
    }
    if (pos < this.len && this.at(pos) == 0x2e) {
      pos++;
      const digits = pos;
      while (pos < this.len && this.at(pos) >= 0x30 && this.at(pos) <= 0x39) pos++;
      if (pos == digits) return -1;
    }
    if (pos < this.len && (this.at(pos) == 0x65 || this.at(pos) == 0x45)) {
      pos++;
      if (pos < this.len && (this.at(pos) == 0x2b || this.at(pos) == 0x2d)) pos++;
      const digits = pos;
      while (pos < this.len && this.at(pos) >= 0x30 && this.at(pos) <= 0x39) pos++;
      if (pos == digits) return -1;
    }
    return pos;
  }

  /** True when the number at [start, end) is a plain non-negative integer (what Python reads as int >= 0). */
  isNonNegativeInt(start: i32, end: i32): bool {
    if (start >= end) return false;
    for (let i = start; i < end; i++) {
      const c = this.at(i);
      if (c < 0x30 || c > 0x39) return false;
    }
    return true;
  }

  private hex(pos: i32): i32 {
    if (pos + 4 > this.len) return -1;
    let value = 0;
    for (let i = 0; i < 4; i++) {
      const c = this.at(pos + i);
      let digit: i32;
      if (c >= 0x30 && c <= 0x39) digit = c - 0x30;
      else if (c >= 0x61 && c <= 0x66) digit = c - 0x61 + 10;
      else if (c >= 0x41 && c <= 0x46) digit = c - 0x41 + 10;
      else return -1;
      value = (value << 4) | digit;
    }
    return value;
  }

  /** Bytes of one valid UTF-8 sequence starting with lead byte c at pos, or 0 (Python's strict codec). */
  private utf8Length(pos: i32, c: u32): i32 {
    let need = 0;
    let low: u32 = 0x80;
    let high: u32 = 0xbf;
    if (c >= 0xc2 && c <= 0xdf) need = 1;
    else if (c == 0xe0) { need = 2; low = 0xa0; }
    else if (c >= 0xe1 && c <= 0xec) need = 2;
    else if (c == 0xed) { need = 2; high = 0x9f; }
    else if (c >= 0xee && c <= 0xef) need = 2;
    else if (c == 0xf0) { need = 3; low = 0x90; }
    else if (c >= 0xf1 && c <= 0xf3) need = 3;
    else if (c == 0xf4) { need = 3; high = 0x8f; }
    else return 0;
    if (pos + need >= this.len) return 0;
    const second = this.at(pos + 1);
    if (second < low || second > high) return 0;
    for (let i = 2; i <= need; i++) {
      const next = this.at(pos + i);
      if (next < 0x80 || next > 0xbf) return 0;
    }
    return need + 1;
  }

  /** End of the string starting at pos (a quote), or -1. Escapes and UTF-8 are validated. */
  skipString(pos: i32): i32 {
    // A request's body is walked several times (validation, the decision, the prompt text):
    // long strings (prompts) are scanned once and their ends remembered.
    const known = this.long;
    if (known != null && known.has(pos)) return <i32>(known.get(pos) >> 1);
    const start = pos;
    this.plain = true;
    const end = this.scanString(pos);
    if (end - start >= LONG_STRING) {
      const cache = known != null ? known : new Map<i32, i64>();
      cache.set(start, (<i64>end << 1) | (this.plain ? 1 : 0));
      this.long = cache;
    }
    return end;
  }

  /** True when the long string at pos (already skipped) holds only ASCII and no escape. */
  private plainLong(pos: i32): bool {
    const known = this.long;
    return known != null && known.has(pos) && (known.get(pos) & 1) == 1;
  }

  private scanString(pos: i32): i32 {
    pos++;
    const data = this.data;
    while (pos < this.len) {
      // Prompts are long runs of plain ASCII: 64 bytes per step while none needs a look, then
      // 16 to find the one that does.
      while (pos + 64 <= this.len) {
        const at = data + <usize>pos;
        const any = v128.or(
          v128.or(needsLook(v128.load(at)), needsLook(v128.load(at, 16))),
          v128.or(needsLook(v128.load(at, 32)), needsLook(v128.load(at, 48))),
        );
        if (v128.any_true(any)) break;
        pos += 64;
      }
      while (pos + 16 <= this.len) {
        const special = i8x16.bitmask(needsLook(v128.load(data + <usize>pos)));
        if (special != 0) {
          pos += ctz(special); // the plain bytes before it need no look
          break;
        }
        pos += 16;
      }
      if (pos >= this.len) break;
      const c = this.at(pos);
      if (c == 0x22) return pos + 1;
      if (c == 0x5c) {
        this.plain = false;
        if (pos + 1 >= this.len) return -1;
        const e = this.at(pos + 1);
        if (e == 0x75) {
          const unit = this.hex(pos + 2);
          if (unit < 0) return -1;
          pos += 6;
        } else if (e == 0x22 || e == 0x5c || e == 0x2f || e == 0x62 || e == 0x66 || e == 0x6e || e == 0x72 || e == 0x74) {
          pos += 2;
        } else {
          return -1;
        }
      } else if (c < 0x20) {
        return -1; // json.loads is strict about control characters
      } else if (c < 0x80) {
        pos++;
      } else {
        this.plain = false;
        const n = this.utf8Length(pos, c);
        if (n == 0) { this.unsupported = true; return -1; }
        pos += n;
      }
    }
    return -1;
  }

  /** The string at pos (validated by skipString first), decoded; sets `unsupported` on a lone surrogate. */
  decodeString(pos: i32, end: i32): string {
    const start = pos + 1;
    const last = end - 1;
    let plain = true;
    for (let i = start; i < last; i++) {
      if (this.at(i) == 0x5c) { plain = false; break; }
    }
    if (plain) return String.UTF8.decodeUnsafe(this.data + <usize>start, <usize>(last - start));
    const out = new Uint8Array(last - start + 8);
    const n = this.decodeInto(pos, end, out, 0, out.byteLength);
    return String.UTF8.decodeUnsafe(out.dataStart, <usize>n);
  }

  /** Decodes the string at pos as UTF-8 into out[n..limit); returns the new length. Stops at
   * the limit, possibly inside a character (callers hash bytes, as Python's text.encode()[:n]). */
  decodeInto(pos: i32, end: i32, out: Uint8Array, n: i32, limit: i32): i32 {
    let i = pos + 1;
    const last = end - 1;
    while (i < last && n < limit) {
      const c = this.at(i);
      if (c != 0x5c) {
        // A run without escapes is copied as it is, in one step.
        let run = i + 1;
        const backslash = i8x16.splat(0x5c);
        while (run + 16 <= last) {
          const found = i8x16.bitmask(i8x16.eq(v128.load(this.data + <usize>run), backslash));
          if (found != 0) { run += ctz(found); break; }
          run += 16;
        }
        while (run < last && this.at(run) != 0x5c) run++;
        const size = min(run - i, limit - n);
        memory.copy(out.dataStart + <usize>n, this.data + <usize>i, <usize>size);
        n += size;
        i += size;
        continue;
      }
      const e = this.at(i + 1);
      i += 2;
      if (e == 0x75) {
        const code = this.codePoint(i, last);
        i = this.escapeEnd;
        if (code < 0x80) {
          out[n++] = <u8>code;
        } else if (code < 0x800) {
          n = put(out, n, limit, 0xc0 | (code >> 6));
          n = put(out, n, limit, 0x80 | (code & 0x3f));
        } else if (code < 0x10000) {
          n = put(out, n, limit, 0xe0 | (code >> 12));
          n = put(out, n, limit, 0x80 | ((code >> 6) & 0x3f));
          n = put(out, n, limit, 0x80 | (code & 0x3f));
        } else {
          n = put(out, n, limit, 0xf0 | (code >> 18));
          n = put(out, n, limit, 0x80 | ((code >> 12) & 0x3f));
          n = put(out, n, limit, 0x80 | ((code >> 6) & 0x3f));
          n = put(out, n, limit, 0x80 | (code & 0x3f));
        }
      } else if (e == 0x62) out[n++] = 0x08;
      else if (e == 0x66) out[n++] = 0x0c;
      else if (e == 0x6e) out[n++] = 0x0a;
      else if (e == 0x72) out[n++] = 0x0d;
      else if (e == 0x74) out[n++] = 0x09;
      else out[n++] = <u8>e; // " \ /
    }
    return n;
  }

  /** The code point of the \uXXXX escape whose digits start at i (with a following low
   * surrogate's escape, if any); sets escapeEnd past it. A lone surrogate is U+FFFD and flags
   * `unsupported` (json.loads would keep it; the brain decides those). */
  private codePoint(i: i32, last: i32): i32 {
    let code = this.hex(i);
    i += 4;
    if (code >= 0xd800 && code <= 0xdbff && i + 6 <= last && this.at(i) == 0x5c && this.at(i + 1) == 0x75) {
      const low = this.hex(i + 2);
      if (low >= 0xdc00 && low <= 0xdfff) {
        code = 0x10000 + ((code - 0xd800) << 10) + (low - 0xdc00);
        i += 6;
      }
    }
    this.escapeEnd = i;
    if (code >= 0xd800 && code <= 0xdfff) { this.unsupported = true; code = 0xfffd; }
    return code;
  }

  /** Bytes of the string at pos (validated by skipString) once decoded as UTF-8; sets
   * `nonAscii` when one of them is >= 0x80 and `unsupported` on a lone surrogate, as decodeInto. */
  decodedSize(pos: i32, end: i32): i32 {
    if (this.plainLong(pos)) return end - pos - 2;
    const backslash = i8x16.splat(0x5c);
    const ascii = i8x16.splat(0x7f);
    let i = pos + 1;
    const last = end - 1;
    let n = 0;
    while (i < last) {
      // Long prompts are plain ASCII: 16 bytes per step until an escape or a multi-byte character.
      while (i + 16 <= last) {
        const chunk = v128.load(this.data + <usize>i);
        const special = i8x16.bitmask(v128.or(i8x16.eq(chunk, backslash), i8x16.gt_u(chunk, ascii)));
        if (special != 0) {
          const plain = ctz(special); // one byte each, as below
          i += plain;
          n += plain;
          break;
        }
        i += 16;
        n += 16;
      }
      if (i >= last) break;
      const c = this.at(i);
      if (c != 0x5c) {
        if (c >= 0x80) this.nonAscii = true;
        n++;
        i++;
        continue;
      }
      const e = this.at(i + 1);
      i += 2;
      if (e != 0x75) { n++; continue; }
      const code = this.codePoint(i, last);
      i = this.escapeEnd;
      if (code >= 0x80) this.nonAscii = true;
      n += code < 0x80 ? 1 : code < 0x800 ? 2 : code < 0x10000 ? 3 : 4;
    }
    return n;
  }

  /** The members of the object at pos: each key's and value's span. null if invalid. */
  fields(pos: i32, depth: i32): Array<Field> | null {
    const out = new Array<Field>();
    pos = this.ws(pos + 1);
    if (pos < this.len && this.at(pos) == 0x7d) { this.lastEnd = pos + 1; return out; }
    while (true) {
      if (this.kind(pos) != Kind.String) return null;
      const keyEnd = this.skipString(pos);
      if (keyEnd < 0) return null;
      let escaped = false;
      for (let i = pos + 1; i < keyEnd - 1; i++) {
        if (this.at(i) == 0x5c) { escaped = true; break; }
      }
      const key = pos;
      pos = this.ws(keyEnd);
      if (pos >= this.len || this.at(pos) != 0x3a) return null;
      const valueStart = this.ws(pos + 1);
      const valueEnd = this.skipValue(valueStart, depth + 1);
      if (valueEnd < 0) return null;
      const field = new Field(this, key, keyEnd, escaped, valueStart, valueEnd);
      // An escaped key may hide a lone surrogate: decoding it now flags `unsupported`.
      if (escaped) field.key;
      out.push(field);
      pos = this.ws(valueEnd);
      if (pos >= this.len) return null;
      const c = this.at(pos);
      if (c == 0x7d) { this.lastEnd = pos + 1; return out; }
      if (c != 0x2c) return null;
      pos = this.ws(pos + 1);
    }
  }

  /** Start positions of the array's items at pos; null if invalid. */
  items(pos: i32, depth: i32): Array<i32> | null {
    const out = new Array<i32>();
    pos = this.ws(pos + 1);
    if (pos < this.len && this.at(pos) == 0x5d) return out;
    while (true) {
      const end = this.skipValue(pos, depth + 1);
      if (end < 0) return null;
      out.push(pos);
      pos = this.ws(end);
      if (pos >= this.len) return null;
      const c = this.at(pos);
      if (c == 0x5d) return out;
      if (c != 0x2c) return null;
      pos = this.ws(pos + 1);
    }
  }

  /** A string value, or null if the value at pos is not a string. */
  stringAt(pos: i32): string | null {
    if (this.kind(pos) != Kind.String) return null;
    const end = this.skipString(pos);
    if (end < 0) return null;
    return this.decodeString(pos, end);
  }

  /** An integer value (snapshot data only: our own brain writes these), or the default. */
  intAt(pos: i32, otherwise: i64): i64 {
    if (this.kind(pos) != Kind.Number) return otherwise;
    const end = this.skipNumber(pos);
    if (end < 0) return otherwise;
    let negative = false;
    let i = pos;
    if (this.at(i) == 0x2d) { negative = true; i++; }
    let value: i64 = 0;
    for (; i < end; i++) {
      const c = this.at(i);
      if (c < 0x30 || c > 0x39) break; // fractions are not used in snapshots
      value = value * 10 + <i64>(c - 0x30);
    }
    return negative ? -value : value;
  }
}

function put(out: Uint8Array, n: i32, limit: i32, byte: i32): i32 {
  if (n < limit) out[n++] = <u8>byte;
  return n;
}

/** Lanes holding a quote, a backslash, a control character or a byte of a multi-byte
 * character: as signed bytes, both of the last two are below 0x20 (one compare for two). */
// @ts-ignore: decorator
@inline function needsLook(chunk: v128): v128 {
  return v128.or(
    v128.or(i8x16.eq(chunk, i8x16.splat(0x22)), i8x16.eq(chunk, i8x16.splat(0x5c))),
    i8x16.lt_s(chunk, i8x16.splat(0x20)),
  );
}

/** FNV-1a, 32 bits: the affinity hash, identical in extproc/wasm/reference.py. */
export function fnv1a(bytes: usize, len: i32, seed: u32): u32 {
  let hash = seed;
  for (let i = 0; i < len; i++) {
    hash ^= <u32>load<u8>(bytes + <usize>i);
    hash *= 16777619;
  }
  return hash;
}

export const FNV_OFFSET: u32 = 2166136261;
