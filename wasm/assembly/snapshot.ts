// The brain's routing snapshot (format 4, see docs/wasm.md), parsed once per change per VM.
import { Json, Kind, Field } from "./json";

export const SNAPSHOT_FORMAT: i64 = 4;

export class Target {
  looked: bool = false; // set is this snapshot's candidates for the target (Snapshot.candidatesFor)
  set: CandidateSet | null = null;
  constructor(public model: string, public pool: string) {}
}

export class Candidate {
  // The load scorer's fleet terms (billionths of a typical TTFT) and the scrape's queue; only
  // kept rows have them (hasLoad), the last-resort fill does not.
  hasLoad: bool = false;
  perToken: i64 = 0;
  step: i64 = 0;
  perQueued: i64 = 0;
  waiting: i64 = 0;
  running: i64 = 0;
  constructor(public address: string, public score: i64, public addressBytes: ArrayBuffer) {}
}

export class CandidateSet {
  saturated: bool = false;
  endpoints: Array<Candidate> = new Array<Candidate>();
}

/** What the compiled policy says for one (task, stream, model) key. */
export class Route {
  escalate: bool = false;
  rejectStatus: i32 = 0;
  rejectBody: string = "";
  targets: Array<Target> = new Array<Target>();
  // The chain goes on to a hosted provider's target: when none of these targets has an
  // endpoint, the brain decides (never the filter's 503).
  thenEscalate: bool = false;
  headers: Array<string> = new Array<string>(); // name, value, name, value...
}

export class Snapshot {
  version: string = "";
  endpointsPerRequest: i32 = 3;
  maxBodyBytes: i64 = 4 * 1024 * 1024;
  sessionHeader: string = "x-user-id";
  tenantHeader: string = "";
  tenants: Set<string> = new Set<string>();
  escalateAll: bool = false;
  escalateUnknownModels: bool = false;
  injectStreamUsage: bool = false;
  available: string = "";
  inflightWeight: i64 = 1000000;
  loadWeight: i64 = 0;
  sessionWeight: i64 = 1000000;
  prefixWeight: i64 = 2000000;
  // The prefix scorer's blocks: the prompt's first prefixBlockBytes × prefixMaxBlocks bytes
  // (the brain keeps the product at most 64 KiB).
  prefixBlockBytes: i32 = 64;
  prefixMaxBlocks: i32 = 64;
  affinityLoadFactorPct: i32 = 125;
  staleAfterMs: i64 = 2000;
  // The brain's decision-log sampling: a request whose CRC-32 of its id is below this gets a
  // record of its own (0: no decision log, nothing is sampled).
  logSampleBelow: i64 = 0;
  routes: Map<string, Route> = new Map<string, Route>();
  candidates: Map<string, CandidateSet> = new Map<string, CandidateSet>();

  /** The table row; tenants without rows of their own share "*". */
  route(task: string, stream: bool, model: string, tenant: string): Route | null {
    // Traffic repeats itself: the last lookup answers most requests without building a key.
    if (this.lastLooked && stream == this.lastStream && task == this.lastTask && model == this.lastModel
      && tenant == this.lastTenant) {
      return this.lastRoute;
    }
    const key = task + (stream ? "|1|" : "|0|") + model + "|" + (this.tenants.has(tenant) ? tenant : "*");
    const found = this.routes.has(key) ? this.routes.get(key) : null;
    this.lastLooked = true;
    this.lastTask = task;
    this.lastStream = stream;
    this.lastModel = model;
    this.lastTenant = tenant;
    this.lastRoute = found;
    return found;
  }

  candidatesFor(target: Target): CandidateSet | null {
    // A target belongs to this snapshot's routes: its set is looked up once.
    if (!target.looked) {
      const key = target.model + "|" + target.pool;
      target.set = this.candidates.has(key) ? this.candidates.get(key) : null;
      target.looked = true;
    }
    return target.set;
  }

  private lastLooked: bool = false;
  private lastTask: string = "";
  private lastStream: bool = false;
  private lastModel: string = "";
  private lastTenant: string = "";
  private lastRoute: Route | null = null;
}

function boolAt(json: Json, pos: i32): bool {
  return json.kind(pos) == Kind.True;
}

function parseRoute(json: Json, pos: i32): Route | null {
  const route = new Route();
  const fields = json.fields(pos, 2);
  if (fields == null) return null;
  for (let i = 0; i < fields.length; i++) {
    const field = fields[i];
    if (field.key == "escalate") {
      route.escalate = boolAt(json, field.start);
    } else if (field.key == "then_escalate") {
      route.thenEscalate = boolAt(json, field.start);
    } else if (field.key == "reject" && json.kind(field.start) == Kind.Object) {
      const reject = json.fields(field.start, 3);
      if (reject == null) return null;
      for (let j = 0; j < reject.length; j++) {
        if (reject[j].key == "status") route.rejectStatus = <i32>json.intAt(reject[j].start, 0);
        else if (reject[j].key == "body") {
          const body = json.stringAt(reject[j].start);
          if (body == null) return null;
          route.rejectBody = body;
        }
      }
    } else if (field.key == "targets") {
      const items = json.items(field.start, 3);
      if (items == null) return null;
      for (let j = 0; j < items.length; j++) {
        const pair = json.items(items[j], 4);
        if (pair == null || pair.length != 2) return null;
        const model = json.stringAt(pair[0]);
        const pool = json.stringAt(pair[1]);
        if (model == null || pool == null) return null;
        route.targets.push(new Target(model, pool));
      }
    } else if (field.key == "headers") {
      const items = json.items(field.start, 3);
      if (items == null) return null;
      for (let j = 0; j < items.length; j++) {
        const pair = json.items(items[j], 4);
        if (pair == null || pair.length != 2) return null;
        const name = json.stringAt(pair[0]);
        const value = json.stringAt(pair[1]);
        if (name == null || value == null) return null;
        route.headers.push(name);
        route.headers.push(value);
      }
    }
  }
  return route;
}

function parseCandidates(json: Json, pos: i32): CandidateSet | null {
  const set = new CandidateSet();
  const fields = json.fields(pos, 2);
  if (fields == null) return null;
  for (let i = 0; i < fields.length; i++) {
    const field = fields[i];
    if (field.key == "saturated") {
      set.saturated = boolAt(json, field.start);
    } else if (field.key == "endpoints") {
      const items = json.items(field.start, 3);
      if (items == null) return null;
      for (let j = 0; j < items.length; j++) {
        const entry = json.items(items[j], 4);
        if (entry == null || (entry.length != 2 && entry.length != 7)) return null;
        const address = json.stringAt(entry[0]);
        if (address == null) return null;
        const candidate = new Candidate(address, json.intAt(entry[1], 0), String.UTF8.encode(address));
        if (entry.length == 7) {
          candidate.hasLoad = true;
          candidate.perToken = json.intAt(entry[2], 0);
          candidate.step = json.intAt(entry[3], 0);
          candidate.perQueued = json.intAt(entry[4], 0);
          candidate.waiting = json.intAt(entry[5], 0);
          candidate.running = json.intAt(entry[6], 0);
        }
        set.endpoints.push(candidate);
      }
    }
  }
  return set;
}

/** Parses a snapshot; null when it is not one this filter understands (the old one stays). */
export function parseSnapshot(bytes: Uint8Array): Snapshot | null {
  const json = new Json(bytes.dataStart, bytes.byteLength);
  const start = json.ws(0);
  if (json.kind(start) != Kind.Object) return null;
  const fields = json.fields(start, 0);
  if (fields == null) return null;
  const snapshot = new Snapshot();
  let format: i64 = 0;
  for (let i = 0; i < fields.length; i++) {
    const field: Field = fields[i];
    const key = field.key;
    const at = field.start;
    if (key == "format") format = json.intAt(at, 0);
    else if (key == "version") {
      const version = json.stringAt(at);
      if (version != null) snapshot.version = version;
    } else if (key == "endpoints_per_request") snapshot.endpointsPerRequest = <i32>json.intAt(at, 3);
    else if (key == "max_body_bytes") snapshot.maxBodyBytes = json.intAt(at, snapshot.maxBodyBytes);
    else if (key == "session_header") {
      const name = json.stringAt(at);
      // Looked up in the header map's own bytes, where Envoy keeps keys lowercase.
      if (name != null) snapshot.sessionHeader = name.toLowerCase();
    } else if (key == "tenant_header") {
      const name = json.stringAt(at);
      if (name != null) snapshot.tenantHeader = name.toLowerCase();
    } else if (key == "tenants") {
      const items = json.items(at, 1);
      if (items == null) return null;
      for (let j = 0; j < items.length; j++) {
        const tenant = json.stringAt(items[j]);
        if (tenant == null) return null;
        snapshot.tenants.add(tenant);
      }
    } else if (key == "escalate_all") snapshot.escalateAll = boolAt(json, at);
    else if (key == "escalate_unknown_models") snapshot.escalateUnknownModels = boolAt(json, at);
    else if (key == "inject_stream_usage") snapshot.injectStreamUsage = boolAt(json, at);
    else if (key == "available") {
      const available = json.stringAt(at);
      if (available != null) snapshot.available = available;
    } else if (key == "inflight_weight") snapshot.inflightWeight = json.intAt(at, snapshot.inflightWeight);
    else if (key == "load_weight") snapshot.loadWeight = json.intAt(at, snapshot.loadWeight);
    else if (key == "session_weight") snapshot.sessionWeight = json.intAt(at, snapshot.sessionWeight);
    else if (key == "prefix_weight") snapshot.prefixWeight = json.intAt(at, snapshot.prefixWeight);
    else if (key == "prefix_block_bytes") snapshot.prefixBlockBytes = <i32>json.intAt(at, snapshot.prefixBlockBytes);
    else if (key == "prefix_max_blocks") snapshot.prefixMaxBlocks = <i32>json.intAt(at, snapshot.prefixMaxBlocks);
    else if (key == "affinity_load_factor_pct") snapshot.affinityLoadFactorPct = <i32>json.intAt(at, snapshot.affinityLoadFactorPct);
    else if (key == "stale_after_ms") snapshot.staleAfterMs = json.intAt(at, snapshot.staleAfterMs);
    else if (key == "log_sample_below") snapshot.logSampleBelow = json.intAt(at, 0);
    else if (key == "routes") {
      const routes = json.fields(at, 1);
      if (routes == null) return null;
      for (let j = 0; j < routes.length; j++) {
        const route = parseRoute(json, routes[j].start);
        if (route == null) return null;
        snapshot.routes.set(routes[j].key, route);
      }
    } else if (key == "candidates") {
      const sets = json.fields(at, 1);
      if (sets == null) return null;
      for (let j = 0; j < sets.length; j++) {
        const set = parseCandidates(json, sets[j].start);
        if (set == null) return null;
        snapshot.candidates.set(sets[j].key, set);
      }
    }
  }
  if (format != SNAPSHOT_FORMAT || json.unsupported) return null;
  const blockBytes = <i64>snapshot.prefixBlockBytes;
  if (blockBytes < 1 || snapshot.prefixMaxBlocks < 0 || blockBytes * <i64>snapshot.prefixMaxBlocks > 65536) return null;
  return snapshot;
}
