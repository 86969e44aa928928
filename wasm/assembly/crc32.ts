// CRC-32 (zlib's, reflected 0xEDB88320). The brain samples its decision log by it
// (extproc/observability/decision_log.py) and the prefix blocks are chained with it as the
// scheduler's prefix scorer chains them (extproc/scheduler/scorers/prefix.py).
//
// Eight bytes per step ("slicing by 8": eight 256-entry tables, 8 KiB): a prompt's 4 KiB of
// prefix blocks are hashed on every request, and a byte at a time costs several µs.
const TABLES = new StaticArray<u32>(8 * 256);
for (let n: u32 = 0; n < 256; n++) {
  let c = n;
  for (let k = 0; k < 8; k++) c = (c & 1) != 0 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  TABLES[n] = c;
}
for (let t = 1; t < 8; t++) {
  for (let n = 0; n < 256; n++) {
    const previous = TABLES[(t - 1) * 256 + n];
    TABLES[t * 256 + n] = (previous >>> 8) ^ TABLES[previous & 0xff];
  }
}

// @ts-ignore: decorator
@inline function entry(table: i32, index: u32): u32 {
  return unchecked(TABLES[(table << 8) + <i32>(index & 0xff)]);
}

/** zlib.crc32(bytes, running): `length` bytes at `data`, continuing from `running`. */
export function crc32Bytes(data: usize, length: i32, running: u32 = 0): u32 {
  let c: u32 = running ^ 0xffffffff;
  let i = 0;
  for (; i + 8 <= length; i += 8) {
    const one = load<u32>(data + <usize>i) ^ c;
    const two = load<u32>(data + <usize>i, 4);
    c = entry(7, one) ^ entry(6, one >>> 8) ^ entry(5, one >>> 16) ^ entry(4, one >>> 24)
      ^ entry(3, two) ^ entry(2, two >>> 8) ^ entry(1, two >>> 16) ^ entry(0, two >>> 24);
  }
  for (; i < length; i++) c = entry(0, c ^ <u32>load<u8>(data + <usize>i)) ^ (c >>> 8);
  return c ^ 0xffffffff;
}

export function crc32(text: string): u32 {
  const bytes = String.UTF8.encode(text);
  return crc32Bytes(changetype<usize>(bytes), bytes.byteLength);
}
