// A minimal proxy-wasm ABI 0.2.1 host in Node, to time the filter's own work per request and
// count its host calls without Envoy (a dev tool, not shipped; docs in wasm/bench/README.md).
//
//   node wasm/bench/host.mjs [--requests N] [--runs R] [--snapshot FILE] [--tick-every N] [--prompt-bytes N] [--counts] MODULE.wasm...
//
// Each module gets its own instance, driven as Envoy drives it: vm start, configure (the local
// config's plugin settings), the snapshot poll answered with FILE, then per request the headers,
// body (end of stream), response headers, response body and log callbacks; a tick every 1000
// requests (--tick-every) (the poll it starts is answered 304, a report 204). Runs alternate between modules
// (interleaved, so drift in the machine's speed hits all alike); prints the median µs per
// request with its min and max, and with --counts the host calls per request by kind.
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { dirname, join } from "node:path";

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const option = (name, otherwise) => {
  const at = args.indexOf(name);
  if (at < 0) return otherwise;
  const value = args[at + 1];
  args.splice(at, 2);
  return value;
};
const flag = (name) => {
  const at = args.indexOf(name);
  if (at >= 0) args.splice(at, 1);
  return at >= 0;
};
const REQUESTS = Number(option("--requests", "20000"));
const RUNS = Number(option("--runs", "7"));
const SNAPSHOT = readFileSync(option("--snapshot", join(here, "snapshot-1.json")));
const COUNTS = flag("--counts");
const TICK_EVERY = Number(option("--tick-every", "1000")); // Envoy ticks every 100 ms
const modules = args;
if (modules.length == 0) {
  console.error("usage: node wasm/bench/host.mjs [--requests N] [--runs R] [--snapshot FILE] [--tick-every N] [--prompt-bytes N] [--counts] MODULE.wasm...");
  process.exit(2);
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const PLUGIN_CONFIG = encoder.encode(JSON.stringify({
  brain_cluster: "llm_brain", brain_authority: "llm-brain", poll_ms: 100, decide_timeout_ms: 1000,
  report_every_ticks: 10, observe: true, max_records: 1000, hold_headers: true,
}));
// extproc/bench/overhead.py's request: a 200-byte chat body by default.
// --prompt-bytes N: the content grows to N bytes (the benchmark's 200 KB case: 204800).
const REQUEST_BODY = encoder.encode('{"model":"m","messages":[{"role":"user","content":"' + "a".repeat(Math.max(1, Number(option("--prompt-bytes", "200")) - 60)) + '"}]}');
const RESPONSE_BODY = encoder.encode(JSON.stringify({
  id: "chatcmpl-1", object: "chat.completion", created: 1700000000, model: "m",
  choices: [{ index: 0, message: { role: "assistant", content: "Hello there, how can I help?" }, finish_reason: "stop" }],
  usage: { prompt_tokens: 35, completion_tokens: 8, total_tokens: 43 },
}));

// Envoy's map kinds (abi.ts MapType) and buffer kinds (BufferType).
const REQUEST_HEADERS = 0, RESPONSE_HEADERS = 2, CALL_RESPONSE_HEADERS = 6;
const REQUEST_BODY_KIND = 0, RESPONSE_BODY_KIND = 1, CALL_RESPONSE_BODY = 4, PLUGIN_CONFIGURATION = 7;

function requestHeadersOf(n) {
  return [
    [":authority", "127.0.0.1:10000"], [":path", "/v1/chat/completions"], [":method", "POST"],
    [":scheme", "http"], ["content-type", "application/json"], ["content-length", String(REQUEST_BODY.length)],
    ["user-agent", "wrk"], ["x-forwarded-proto", "http"],
    ["x-request-id", `5f0c${(n * 2654435761 >>> 0).toString(16).padStart(8, "0")}-8d2e-4b7a-9c51-0b2f7e3a${String(n % 10000).padStart(4, "0")}`],
  ];
}
// A pool of request header maps (ids differ), encoded once and copied per request.
const REQUEST_HEADER_POOL = Array.from({ length: 4096 }, (_, n) => {
  const pairs = requestHeadersOf(n);
  pairs.encoded = encodePairs(pairs);
  return pairs;
});
const requestHeaders = (n) => {
  const pairs = REQUEST_HEADER_POOL[n % REQUEST_HEADER_POOL.length];
  const copy = pairs.slice();
  copy.encoded = pairs.encoded;
  return copy;
};
const RESPONSE_HEADERS_LIST = [
  [":status", "200"], ["content-type", "application/json"], ["content-length", String(RESPONSE_BODY.length)],
  ["date", "Mon, 30 Nov 2026 18:00:00 GMT"], ["server", "envoy"], ["x-envoy-upstream-service-time", "1"],
];

function encodePairs(pairs) {
  const parts = pairs.map(([k, v]) => [encoder.encode(k), encoder.encode(v)]);
  let size = 4 + 8 * parts.length;
  for (const [k, v] of parts) size += k.length + v.length + 2;
  const out = new Uint8Array(size);
  const view = new DataView(out.buffer);
  view.setUint32(0, parts.length, true);
  let at = 4 + 8 * parts.length;
  parts.forEach(([k, v], i) => {
    view.setUint32(4 + 8 * i, k.length, true);
    view.setUint32(8 + 8 * i, v.length, true);
    out.set(k, at); at += k.length + 1;
    out.set(v, at); at += v.length + 1;
  });
  return out;
}

function decodePairs(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const count = view.getUint32(0, true);
  const out = [];
  let at = 4 + 8 * count;
  for (let i = 0; i < count; i++) {
    const k = view.getUint32(4 + 8 * i, true), v = view.getUint32(8 + 8 * i, true);
    out.push([decoder.decode(bytes.subarray(at, at + k)), decoder.decode(bytes.subarray(at + k + 1, at + k + 1 + v))]);
    at += k + v + 2;
  }
  return out;
}

class Host {
  constructor(path) {
    this.path = path;
    this.counts = new Map();
    this.maps = new Map();
    this.buffers = new Map();
    this.shared = new Map(); // key -> [bytes, cas]
    this.calls = []; // pending http calls: [token, path]
    this.nextToken = 1;
    this.properties = 0;
    this.local = 0; // local responses sent
    const count = (name, fn) => (...a) => {
      this.counts.set(name, (this.counts.get(name) || 0) + 1);
      return fn(...a);
    };
    const env = {
      proxy_log: count("proxy_log", (level, ptr, size) => {
        if (level >= 3) console.error(`[${path}] ${decoder.decode(this.bytes(ptr, size))}`);
        return 0;
      }),
      proxy_get_buffer_bytes: count("proxy_get_buffer_bytes", (kind, start, max, ptrOut, sizeOut) => {
        const buffer = this.buffers.get(kind);
        if (buffer == null) return 1;
        return this.give(buffer.subarray(start, start + max), ptrOut, sizeOut);
      }),
      proxy_set_buffer_bytes: count("proxy_set_buffer_bytes", (kind, start, size, ptr, len) => {
        this.buffers.set(kind, this.bytes(ptr, len).slice());
        return 0;
      }),
      proxy_get_header_map_value: count("proxy_get_header_map_value", (kind, keyPtr, keyLen, ptrOut, sizeOut) => {
        const key = decoder.decode(this.bytes(keyPtr, keyLen));
        const found = (this.maps.get(kind) || []).find(([k]) => k == key);
        if (found == null) return 1;
        return this.give(encoder.encode(found[1]), ptrOut, sizeOut);
      }),
      proxy_get_header_map_pairs: count("proxy_get_header_map_pairs", (kind, ptrOut, sizeOut) => {
        // Maps are encoded once (the harness's own cost is not the module's).
        const map = this.maps.get(kind) || [];
        if (map.encoded == null) map.encoded = encodePairs(map);
        return this.give(map.encoded, ptrOut, sizeOut);
      }),
      proxy_replace_header_map_value: count("proxy_replace_header_map_value", (kind, keyPtr, keyLen, valuePtr, valueLen) => {
        const key = decoder.decode(this.bytes(keyPtr, keyLen));
        const value = decoder.decode(this.bytes(valuePtr, valueLen));
        const map = (this.maps.get(kind) || []).filter(([k]) => k != key);
        map.push([key, value]);
        this.maps.set(kind, map);
        return 0;
      }),
      proxy_send_local_response: count("proxy_send_local_response", () => { this.local++; return 0; }),
      proxy_set_property: count("proxy_set_property", () => { this.properties++; return 0; }),
      proxy_set_tick_period_milliseconds: count("proxy_set_tick_period_milliseconds", () => 0),
      proxy_get_current_time_nanoseconds: count("proxy_get_current_time_nanoseconds", (out) => {
        this.view().setBigUint64(out, process.hrtime.bigint() + 1_700_000_000_000_000_000n, true);
        return 0;
      }),
      proxy_http_call: count("proxy_http_call", (upPtr, upLen, hPtr, hLen, bPtr, bLen, tPtr, tLen, timeout, tokenOut) => {
        const headers = decodePairs(this.bytes(hPtr, hLen));
        const token = this.nextToken++;
        this.calls.push([token, headers.find(([k]) => k == ":path")[1], headers]);
        this.view().setUint32(tokenOut, token, true);
        return 0;
      }),
      proxy_continue_stream: count("proxy_continue_stream", () => 0),
      proxy_get_shared_data: count("proxy_get_shared_data", (keyPtr, keyLen, ptrOut, sizeOut, casOut) => {
        const key = decoder.decode(this.bytes(keyPtr, keyLen));
        const entry = this.shared.get(key);
        if (entry == null) return 1;
        this.view().setUint32(casOut, entry[1], true);
        return this.give(entry[0], ptrOut, sizeOut);
      }),
      proxy_set_shared_data: count("proxy_set_shared_data", (keyPtr, keyLen, valuePtr, valueLen, cas) => {
        const key = decoder.decode(this.bytes(keyPtr, keyLen));
        const entry = this.shared.get(key);
        if (cas != 0 && entry != null && entry[1] != cas) return 8; // CasMismatch
        this.shared.set(key, [this.bytes(valuePtr, valueLen).slice(), (entry ? entry[1] : 0) + 1]);
        return 0;
      }),
      proxy_set_effective_context: count("proxy_set_effective_context", () => 0),
      proxy_define_metric: count("proxy_define_metric", (kind, ptr, len, idOut) => {
        this.view().setUint32(idOut, this.counts.get("proxy_define_metric"), true);
        return 0;
      }),
      proxy_increment_metric: count("proxy_increment_metric", () => 0),
      proxy_record_metric: count("proxy_record_metric", () => 0),
    };
    const module = new WebAssembly.Module(readFileSync(path));
    this.instance = new WebAssembly.Instance(module, { env });
    const exports = this.instance.exports;
    this.memory = exports.memory;
    // Every VM entry is counted: the exported callbacks and the host's allocations in the module.
    this.vm = {};
    for (const [name, fn] of Object.entries(exports)) {
      if (typeof fn == "function") this.vm[name] = count(name, fn);
    }
    if (this.vm._initialize) this.vm._initialize();
  }

  view() { return new DataView(this.memory.buffer); }
  bytes(ptr, len) { return new Uint8Array(this.memory.buffer, ptr, len); }

  /** Returns data as Envoy does: memory allocated in the module, its pointer and size in slots. */
  give(data, ptrOut, sizeOut) {
    const ptr = this.vm.proxy_on_memory_allocate(data.length);
    new Uint8Array(this.memory.buffer, ptr, data.length).set(data);
    const view = this.view();
    view.setUint32(ptrOut, ptr, true);
    view.setUint32(sizeOut, data.length, true);
    return 0;
  }

  /** Answers the pending http calls: the poll with the snapshot (or 304 once it has one), reports with 204. */
  answerCalls() {
    const calls = this.calls;
    this.calls = [];
    for (const [token, path, headers] of calls) {
      let status = "204", body = new Uint8Array(0);
      if (path == "/v1/llm-extproc/snapshot") {
        const known = headers.some(([k]) => k == "if-none-match");
        status = known ? "304" : "200";
        if (!known) body = SNAPSHOT;
      }
      this.maps.set(CALL_RESPONSE_HEADERS, [[":status", status], ["content-length", String(body.length)]]);
      this.buffers.set(CALL_RESPONSE_BODY, body);
      this.vm.proxy_on_http_call_response(1, token, 2, body.length, 0);
    }
  }

  start() {
    this.vm.proxy_on_vm_start(1, 0);
    this.buffers.set(PLUGIN_CONFIGURATION, PLUGIN_CONFIG);
    if (this.vm.proxy_on_configure(1, PLUGIN_CONFIG.length) != 1) throw new Error("configure failed");
    this.answerCalls();
    this.next = 2;
  }

  request() {
    const id = this.next++;
    const vm = this.vm;
    this.maps.set(REQUEST_HEADERS, requestHeaders(id));
    vm.proxy_on_request_headers(id, 9, 0);
    this.buffers.set(REQUEST_BODY_KIND, REQUEST_BODY);
    vm.proxy_on_request_body(id, REQUEST_BODY.length, 1);
    this.maps.set(RESPONSE_HEADERS, RESPONSE_HEADERS_LIST);
    vm.proxy_on_response_headers(id, RESPONSE_HEADERS_LIST.length, 0);
    this.buffers.set(RESPONSE_BODY_KIND, RESPONSE_BODY);
    vm.proxy_on_response_body(id, RESPONSE_BODY.length, 1);
    vm.proxy_on_log(id);
    if (id % TICK_EVERY == 0) {
      vm.proxy_on_tick(1);
      this.answerCalls();
    }
  }

  run(n) {
    const started = process.hrtime.bigint();
    for (let i = 0; i < n; i++) this.request();
    return Number(process.hrtime.bigint() - started) / 1000 / n;
  }
}

const hosts = modules.map((path) => new Host(path));
for (const host of hosts) {
  host.start();
  host.run(REQUESTS); // warm-up: V8's tiers, the module's maps
  const headers = host.maps.get(REQUEST_HEADERS);
  if (!headers.some(([k]) => k == "x-gateway-destination-endpoint")) {
    throw new Error(`${host.path}: the request was not routed: ${JSON.stringify(headers)}`);
  }
}
const times = hosts.map(() => []);
for (let r = 0; r < RUNS; r++) {
  hosts.forEach((host, i) => times[i].push(host.run(REQUESTS)));
}
const median = (xs) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
hosts.forEach((host, i) => {
  const t = times[i];
  console.log(`${host.path}: ${median(t).toFixed(2)} µs/request (min ${Math.min(...t).toFixed(2)}, max ${Math.max(...t).toFixed(2)}, ${RUNS} runs of ${REQUESTS})`);
});
if (COUNTS) {
  for (const host of hosts) {
    host.counts.clear();
    host.run(TICK_EVERY);
    const rows = [...host.counts.entries()].sort((a, b) => b[1] - a[1]);
    let calls = 0, entries = 0;
    console.log(`${host.path}: per request`);
    for (const [name, n] of rows) {
      const entry = name.startsWith("proxy_on_") || name == "_initialize";
      if (entry) entries += n; else calls += n;
      console.log(`  ${(n / TICK_EVERY).toFixed(3).padStart(8)}  ${name}${entry ? " (VM entry)" : ""}`);
    }
    console.log(`  host calls ${(calls / TICK_EVERY).toFixed(2)}, VM entries ${(entries / TICK_EVERY).toFixed(2)}`);
  }
}
