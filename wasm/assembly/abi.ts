// The proxy-wasm ABI 0.2.1 host functions this filter uses, and thin typed wrappers.
// Own layer instead of an SDK: @solo-io/proxy-runtime exports ABI 0.2.0, does not compile with
// AssemblyScript 0.27 and passes wrong pointers to the shared-data calls.

export const enum LogLevel { Trace = 0, Debug = 1, Info = 2, Warn = 3, Error = 4, Critical = 5 }
export const enum BufferType { RequestBody = 0, ResponseBody = 1, HttpCallResponseBody = 4, VmConfiguration = 6, PluginConfiguration = 7 }
export const enum MapType { RequestHeaders = 0, RequestTrailers = 1, ResponseHeaders = 2, ResponseTrailers = 3, HttpCallResponseHeaders = 6 }
export const enum HeadersStatus { Continue = 0, StopIteration = 1 }
export const enum DataStatus { Continue = 0, StopIterationAndBuffer = 1, StopIterationNoBuffer = 3 }
export const enum WasmResult { Ok = 0, NotFound = 1 }
export const enum MetricType { Counter = 0, Gauge = 1, Histogram = 2 }

// @ts-ignore: decorator
@external("env", "proxy_log")
declare function proxy_log(level: i32, ptr: usize, size: usize): u32;
// @ts-ignore: decorator
@external("env", "proxy_get_buffer_bytes")
declare function proxy_get_buffer_bytes(kind: i32, start: u32, max: u32, ptrOut: usize, sizeOut: usize): u32;
// @ts-ignore: decorator
@external("env", "proxy_set_buffer_bytes")
declare function proxy_set_buffer_bytes(kind: i32, start: u32, size: u32, ptr: usize, len: usize): u32;
// @ts-ignore: decorator
@external("env", "proxy_get_header_map_value")
declare function proxy_get_header_map_value(kind: i32, keyPtr: usize, keyLen: usize, ptrOut: usize, sizeOut: usize): u32;
// @ts-ignore: decorator
@external("env", "proxy_replace_header_map_value")
declare function proxy_replace_header_map_value(kind: i32, keyPtr: usize, keyLen: usize, valuePtr: usize, valueLen: usize): u32;
// @ts-ignore: decorator
@external("env", "proxy_get_header_map_pairs")
declare function proxy_get_header_map_pairs(kind: i32, ptrOut: usize, sizeOut: usize): u32;
// @ts-ignore: decorator
@external("env", "proxy_send_local_response")
declare function proxy_send_local_response(status: u32, detailsPtr: usize, detailsLen: usize, bodyPtr: usize, bodyLen: usize, headersPtr: usize, headersLen: usize, grpcStatus: i32): u32;
// @ts-ignore: decorator
@external("env", "proxy_set_property")
declare function proxy_set_property(pathPtr: usize, pathLen: usize, valuePtr: usize, valueLen: usize): u32;
// @ts-ignore: decorator
@external("env", "proxy_set_tick_period_milliseconds")
declare function proxy_set_tick_period_milliseconds(ms: u32): u32;
// @ts-ignore: decorator
@external("env", "proxy_get_current_time_nanoseconds")
declare function proxy_get_current_time_nanoseconds(out: usize): u32;
// @ts-ignore: decorator
@external("env", "proxy_http_call")
declare function proxy_http_call(upPtr: usize, upLen: usize, hPtr: usize, hLen: usize, bPtr: usize, bLen: usize, tPtr: usize, tLen: usize, timeoutMs: u32, tokenOut: usize): u32;
// @ts-ignore: decorator
@external("env", "proxy_continue_stream")
declare function proxy_continue_stream(stream: i32): u32;
// @ts-ignore: decorator
@external("env", "proxy_get_shared_data")
declare function proxy_get_shared_data(keyPtr: usize, keyLen: usize, ptrOut: usize, sizeOut: usize, casOut: usize): u32;
// @ts-ignore: decorator
@external("env", "proxy_set_shared_data")
declare function proxy_set_shared_data(keyPtr: usize, keyLen: usize, valuePtr: usize, valueLen: usize, cas: u32): u32;
// @ts-ignore: decorator
@external("env", "proxy_set_effective_context")
declare function proxy_set_effective_context(id: u32): u32;
// @ts-ignore: decorator
@external("env", "proxy_define_metric")
declare function proxy_define_metric(kind: i32, namePtr: usize, nameLen: usize, idOut: usize): u32;
// @ts-ignore: decorator
@external("env", "proxy_increment_metric")
declare function proxy_increment_metric(id: u32, offset: i64): u32;
// @ts-ignore: decorator
@external("env", "proxy_record_metric")
declare function proxy_record_metric(id: u32, value: u64): u32;

// Scratch slots the host writes returned pointers and sizes into.
const slotPtr: usize = heap.alloc(16);
const slotLen: usize = slotPtr + 8;

export function log(level: LogLevel, message: string): void {
  const bytes = String.UTF8.encode(message);
  proxy_log(level, changetype<usize>(bytes), bytes.byteLength);
}

/** Takes ownership of a host-allocated block: copies it out and frees it. */
function takeBytes(): Uint8Array {
  const ptr = load<usize>(slotPtr);
  const len = load<u32>(slotLen);
  const out = new Uint8Array(len);
  if (len > 0) memory.copy(out.dataStart, ptr, len);
  if (ptr != 0) heap.free(ptr);
  return out;
}

export function getBuffer(kind: BufferType, start: u32, max: u32): Uint8Array | null {
  store<usize>(slotPtr, 0);
  store<u32>(slotLen, 0);
  if (proxy_get_buffer_bytes(kind, start, max, slotPtr, slotLen) != WasmResult.Ok) return null;
  return takeBytes();
}

/** A buffer left in host-allocated memory (no copy): read it, then heap.free(pointer). */
export class RawBytes {
  constructor(public pointer: usize, public length: i32) {}
}

// The one buffer a callback reads in place at a time (the request's body, a response chunk).
const rawBuffer = new RawBytes(0, 0);

/** The buffer in host-allocated memory, in an object reused by every call: read it and free
 * its pointer before the next call. */
export function getBufferRaw(kind: BufferType, start: u32, max: u32): RawBytes | null {
  store<usize>(slotPtr, 0);
  store<u32>(slotLen, 0);
  if (proxy_get_buffer_bytes(kind, start, max, slotPtr, slotLen) != WasmResult.Ok) return null;
  rawBuffer.pointer = load<usize>(slotPtr);
  rawBuffer.length = <i32>load<u32>(slotLen);
  return rawBuffer;
}

export function setBuffer(kind: BufferType, start: u32, size: u32, data: Uint8Array): bool {
  return proxy_set_buffer_bytes(kind, start, size, data.dataStart, data.byteLength) == WasmResult.Ok;
}

/** One header's value, "" when absent. */
export function getHeader(kind: MapType, name: string): string {
  const key = String.UTF8.encode(name);
  store<usize>(slotPtr, 0);
  store<u32>(slotLen, 0);
  if (proxy_get_header_map_value(kind, changetype<usize>(key), key.byteLength, slotPtr, slotLen) != WasmResult.Ok) return "";
  const bytes = takeBytes();
  return String.UTF8.decodeUnsafe(bytes.dataStart, bytes.byteLength);
}

/** Sets (or replaces) one header, e.g. of the response in its headers callback. */
export function setHeader(kind: MapType, name: string, value: string): void {
  const key = encodedName(name);
  const length = String.UTF8.byteLength(value);
  const bytes = scratch(length);
  String.UTF8.encodeUnsafe(changetype<usize>(value), value.length, bytes);
  proxy_replace_header_map_value(kind, changetype<usize>(key), key.byteLength, bytes, length);
}

// Values handed to the host are encoded into one reused block: the host copies them.
let scratchBlock: usize = heap.alloc(256);
let scratchSize: usize = 256;

function scratch(size: i32): usize {
  if (<usize>size > scratchSize) {
    scratchSize = max<usize>(<usize>size, scratchSize * 2);
    scratchBlock = heap.realloc(scratchBlock, scratchSize);
  }
  return scratchBlock;
}

/** proxy-wasm's header map wire format: count, (key len, value len)*, (key\0 value\0)*. */
export function encodeHeaders(pairs: Array<string>): ArrayBuffer {
  const count = pairs.length >> 1;
  const encoded = new Array<ArrayBuffer>(pairs.length);
  let size = 4 + 8 * count;
  for (let i = 0; i < pairs.length; i++) {
    encoded[i] = String.UTF8.encode(pairs[i]);
    size += encoded[i].byteLength + 1;
  }
  const out = new ArrayBuffer(size);
  const base = changetype<usize>(out);
  store<u32>(base, count);
  let at = base + 4 + 8 * count;
  for (let i = 0; i < pairs.length; i++) {
    const part = encoded[i];
    store<u32>(base + 4 + 4 * i, part.byteLength);
    memory.copy(at, changetype<usize>(part), part.byteLength);
    at += part.byteLength;
    store<u8>(at, 0);
    at += 1;
  }
  return out;
}

export function decodeHeaders(bytes: Uint8Array): Array<string> {
  const out = new Array<string>();
  if (bytes.byteLength < 4) return out;
  const base = bytes.dataStart;
  const count = load<u32>(base);
  let at = base + 4 + 8 * count;
  for (let i: u32 = 0; i < count * 2; i++) {
    const len = load<u32>(base + 4 + 4 * i);
    out.push(String.UTF8.decodeUnsafe(at, len));
    at += len + 1;
  }
  return out;
}

/** A header map fetched as one block (getHeaderPairsRaw): each lookup scans it in the module
 * instead of crossing into the host (and back, for the value's memory) once per header. */
export class HeaderPairs {
  constructor(public base: usize, public length: i32) {}

  valueLength: i32 = 0; // of the value find() found

  /** Where the first value under `name` (lowercase: Envoy's header keys are) starts, its
   * length in valueLength; 0 when absent. */
  find(name: string): usize {
    if (this.length < 4) return 0;
    const base = this.base;
    const count = load<u32>(base);
    const wanted = name.length;
    let at = base + 4 + 8 * <usize>count;
    for (let i: u32 = 0; i < count; i++) {
      const keyLength = load<u32>(base + 4 + 8 * <usize>i);
      const valueLength = load<u32>(base + 8 + 8 * <usize>i);
      if (keyLength == <u32>wanted) {
        let same = true;
        for (let j = 0; j < wanted; j++) {
          if (<i32>load<u8>(at + <usize>j) != name.charCodeAt(j)) { same = false; break; }
        }
        if (same) {
          this.valueLength = <i32>valueLength;
          return at + keyLength + 1;
        }
      }
      at += keyLength + 1 + valueLength + 1;
    }
    return 0;
  }

  /** The first value under `name`, "" when absent: what proxy_get_header_map_value answers. */
  get(name: string): string {
    const at = this.find(name);
    return at == 0 ? "" : String.UTF8.decodeUnsafe(at, this.valueLength);
  }

  /** Whether the first value under `name` starts with `prefix` (ASCII), compared in place
   * (get(name).startsWith(prefix) without a string). */
  startsWith(name: string, prefix: string): bool {
    const at = this.find(name);
    const n = prefix.length;
    if (at == 0 || this.valueLength < n) return at != 0 && n == 0;
    for (let i = 0; i < n; i++) {
      if (<i32>load<u8>(at + <usize>i) != prefix.charCodeAt(i)) return false;
    }
    return true;
  }

  /** Whether the first value under `name` is `value` (ASCII), compared in place. */
  is(name: string, value: string): bool {
    const at = this.find(name);
    return at != 0 && this.valueLength == value.length && this.startsWith(name, value);
  }

  /** The first value under `name` if it is 1 to 18 decimal digits (in place), else -1. */
  digits(name: string): i64 {
    const at = this.find(name);
    const n = this.valueLength;
    if (at == 0 || n == 0 || n > 18) return -1;
    let value: i64 = 0;
    for (let i = 0; i < n; i++) {
      const c = <i32>load<u8>(at + <usize>i);
      if (c < 0x30 || c > 0x39) return -1;
      value = value * 10 + <i64>(c - 0x30);
    }
    return value;
  }
}

/** Fills `pairs` with a header map left in host-allocated memory (no copy): read it, then
 * heap.free(pairs.base). False (pairs empty) when the map cannot be read. */
export function fetchHeaderPairs(kind: MapType, pairs: HeaderPairs): bool {
  store<usize>(slotPtr, 0);
  store<u32>(slotLen, 0);
  const ok = proxy_get_header_map_pairs(kind, slotPtr, slotLen) == WasmResult.Ok;
  pairs.base = ok ? load<usize>(slotPtr) : 0;
  pairs.length = ok ? <i32>load<u32>(slotLen) : 0;
  return ok;
}

/** All headers of a map, in the wire format (decodeHeaders reads it). */
export function getHeaderPairsRaw(kind: MapType): Uint8Array {
  store<usize>(slotPtr, 0);
  store<u32>(slotLen, 0);
  if (proxy_get_header_map_pairs(kind, slotPtr, slotLen) != WasmResult.Ok) return new Uint8Array(0);
  return takeBytes();
}

export function sendLocalResponse(status: u32, details: string, body: ArrayBuffer, headers: Array<string>): void {
  const detailBytes = String.UTF8.encode(details);
  const headerBytes = encodeHeaders(headers);
  proxy_send_local_response(
    status,
    changetype<usize>(detailBytes), detailBytes.byteLength,
    changetype<usize>(body), body.byteLength,
    changetype<usize>(headerBytes), headerBytes.byteLength,
    -1,
  );
}

// The few header names the filter sets (decision headers, property names), encoded once; found
// by a scan (mostly the same string literals: equal at the first comparison), not a hash.
const NAMES_KEPT = 64;
const names = new Array<string>();
const encodedNames = new Array<ArrayBuffer>();

function encodedName(name: string): ArrayBuffer {
  for (let i = 0; i < names.length; i++) {
    if (names[i] == name) return encodedNames[i];
  }
  const key = String.UTF8.encode(name);
  if (names.length < NAMES_KEPT) { // the brain's names are few too
    names.push(name);
    encodedNames.push(key);
  }
  return key;
}

/** Filter state "wasm.<name>", read by Envoy's header_mutation as %FILTER_STATE(wasm.<name>:PLAIN)%. */
export function setFilterState(name: string, value: string): void {
  const key = encodedName(name);
  const length = String.UTF8.byteLength(value);
  const bytes = scratch(length);
  String.UTF8.encodeUnsafe(changetype<usize>(value), value.length, bytes);
  proxy_set_property(changetype<usize>(key), key.byteLength, bytes, length);
}

export function setTickPeriod(ms: u32): void {
  proxy_set_tick_period_milliseconds(ms);
}

export function nowNanos(): u64 {
  proxy_get_current_time_nanoseconds(slotPtr);
  return load<u64>(slotPtr);
}

/** An HTTP call to an Envoy cluster; returns the token (0 on failure). */
export function httpCall(cluster: string, headers: Array<string>, body: ArrayBuffer, timeoutMs: u32): u32 {
  return httpCallRaw(cluster, headers, changetype<usize>(body), body.byteLength, timeoutMs);
}

export function httpCallRaw(cluster: string, headers: Array<string>, bodyPtr: usize, bodyLen: i32, timeoutMs: u32): u32 {
  const upstream = String.UTF8.encode(cluster);
  const headerBytes = encodeHeaders(headers);
  const trailers = encodeHeaders(new Array<string>());
  store<u32>(slotPtr, 0);
  const result = proxy_http_call(
    changetype<usize>(upstream), upstream.byteLength,
    changetype<usize>(headerBytes), headerBytes.byteLength,
    bodyPtr, bodyLen,
    changetype<usize>(trailers), trailers.byteLength,
    timeoutMs, slotPtr,
  );
  if (result != WasmResult.Ok) return 0;
  return load<u32>(slotPtr);
}

const casSlot: usize = heap.alloc(8);

/** A value every VM of this plugin sees (Envoy's shared data), with its CAS; null if absent. */
export class Shared {
  constructor(public value: Uint8Array, public cas: u32) {}
}

export function getShared(key: string): Shared | null {
  const name = String.UTF8.encode(key);
  store<usize>(slotPtr, 0);
  store<u32>(slotLen, 0);
  store<u32>(casSlot, 0);
  if (proxy_get_shared_data(changetype<usize>(name), name.byteLength, slotPtr, slotLen, casSlot) != WasmResult.Ok) {
    return null;
  }
  const cas = load<u32>(casSlot);
  return new Shared(takeBytes(), cas);
}

/** Writes a shared value; with cas != 0 only if nobody wrote since (false otherwise). */
export function setShared(key: string, value: ArrayBuffer, cas: u32): bool {
  const name = String.UTF8.encode(key);
  return proxy_set_shared_data(changetype<usize>(name), name.byteLength, changetype<usize>(value), value.byteLength, cas) == WasmResult.Ok;
}

/** setShared for bytes in module memory, under a key already encoded (no cas). */
export function setSharedRaw(key: ArrayBuffer, value: usize, length: i32): bool {
  return proxy_set_shared_data(changetype<usize>(key), key.byteLength, value, length, 0) == WasmResult.Ok;
}

/** HTTP call answers arrive at the root context: act on the request that made the call. */
export function setEffectiveContext(id: u32): bool {
  return proxy_set_effective_context(id) == WasmResult.Ok;
}

export function continueRequest(): void {
  proxy_continue_stream(0);
}

export function defineMetric(kind: MetricType, name: string): u32 {
  const bytes = String.UTF8.encode(name);
  store<u32>(slotPtr, 0);
  proxy_define_metric(kind, changetype<usize>(bytes), bytes.byteLength, slotPtr);
  return load<u32>(slotPtr);
}

export function incrementMetric(id: u32, by: i64): void {
  proxy_increment_metric(id, by);
}

export function recordMetric(id: u32, value: u64): void {
  proxy_record_metric(id, value);
}
