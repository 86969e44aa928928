// The least a Wasm decider of this design does per request, with no decision in it: it reads
// the request headers and the whole body, writes the two decision headers (a fixed endpoint:
// the plugin configuration's bytes), and reads the response headers and body as observation
// does. Envoy's side of the cost is the same as the real module's (nine VM entries, two header
// writes and what follows them); the module's own work is nil. A measurement tool, not
// shipped (wasm/bench/README.md).
import {
  BufferType, DataStatus, HeadersStatus, MapType, HeaderPairs, fetchHeaderPairs, getBuffer, getBufferRaw, setHeader,
} from "../assembly/abi";

export { proxy_on_memory_allocate } from "../assembly/memory";

let endpoint = "";
const pairs = new HeaderPairs(0, 0);

export function proxy_abi_version_0_2_1(): void {}

export function proxy_on_vm_start(root: u32, size: u32): u32 {
  return 1;
}

export function proxy_on_configure(root: u32, size: u32): u32 {
  const raw = getBuffer(BufferType.PluginConfiguration, 0, size);
  if (raw != null) endpoint = String.UTF8.decode(raw.buffer);
  return 1;
}

function readHeaders(kind: MapType): void {
  if (fetchHeaderPairs(kind, pairs)) heap.free(pairs.base);
  pairs.base = 0;
  pairs.length = 0;
}

export function proxy_on_request_headers(id: u32, count: u32, endOfStream: u32): u32 {
  readHeaders(MapType.RequestHeaders);
  // No body (a GET): nothing to decide, Envoy's fallback LB routes it.
  return endOfStream != 0 ? HeadersStatus.Continue : HeadersStatus.StopIteration;
}

export function proxy_on_request_body(id: u32, size: u32, endOfStream: u32): u32 {
  if (endOfStream == 0) return DataStatus.StopIterationAndBuffer;
  const body = getBufferRaw(BufferType.RequestBody, 0, size);
  if (body != null) heap.free(body.pointer);
  setHeader(MapType.RequestHeaders, "x-gateway-destination-endpoint", endpoint);
  setHeader(MapType.RequestHeaders, "x-llm-model", "m");
  return DataStatus.Continue;
}

export function proxy_on_response_headers(id: u32, count: u32, endOfStream: u32): u32 {
  readHeaders(MapType.ResponseHeaders);
  return HeadersStatus.Continue;
}

export function proxy_on_response_body(id: u32, size: u32, endOfStream: u32): u32 {
  if (size > 0) {
    const chunk = getBufferRaw(BufferType.ResponseBody, 0, size);
    if (chunk != null) heap.free(chunk.pointer);
  }
  return DataStatus.Continue;
}

export function proxy_on_log(id: u32): void {}
