// In-flight counts across Envoy's workers. Each worker thread runs its own VM: a VM counts its
// own requests and, once it knows another VM, publishes them in shared data whenever they
// change; before each decision it reads the other VMs' entries (re-parsing only those whose CAS
// moved). Every tick it renews its entry's timestamp and learns which VMs exist. A VM registers
// at its first decision, so the main thread's VM (it only polls) is nobody's peer: with one
// worker, no VM reads or writes an entry per request.
import { getShared, nowNanos, setShared, setSharedRaw } from "./abi";

const REGISTRY_KEY = "llm-extproc/vms"; // the VMs' ids, one per line
const PREFIX = "llm-extproc/inflight/";
// A VM that has not published for this long is gone (reloaded, or its worker stopped).
const GONE_AFTER_NS: u64 = 2_000_000_000;

/** Decimal digits of value at out[n..]; returns the new length. */
function writeDigits(out: Uint8Array, n: i32, value: u64): i32 {
  let digits = 1;
  for (let rest = value / 10; rest > 0; rest /= 10) digits++;
  for (let i = digits - 1; i >= 0; i--) {
    out[n + i] = <u8>(0x30 + <u32>(value % 10));
    value /= 10;
  }
  return n + digits;
}

class Peer {
  cas: u32 = 0;
  counts: Map<string, i32> = new Map<string, i32>();
}

export class InFlight {
  own: Map<string, i32> = new Map<string, i32>();
  others: Map<string, i32> = new Map<string, i32>();
  id: string = ""; // registered (at the first decision) once set
  peers: Map<string, Peer> = new Map<string, Peer>();
  // Published twice per request: written into one reused buffer, under a key encoded once.
  private entryKey: ArrayBuffer = new ArrayBuffer(0);
  private entry: Uint8Array = new Uint8Array(256);

  registered(): bool {
    return this.id.length > 0;
  }

  /** Whether some VM has joined the registry (served a request): read from shared data. */
  othersRegistered(): bool {
    const registry = getShared(REGISTRY_KEY);
    return registry != null && registry.value.byteLength > 0;
  }

  count(address: string): i32 {
    const own = this.own.has(address) ? this.own.get(address) : 0;
    // No other worker's counts (one worker): no second lookup.
    return this.others.size > 0 && this.others.has(address) ? own + this.others.get(address) : own;
  }

  add(address: string, delta: i32, now: u64): void {
    if (this.id.length == 0) this.register(now); // routed by the brain before any decision here
    const n = (this.own.has(address) ? this.own.get(address) : 0) + delta;
    if (n > 0) this.own.set(address, n);
    else this.own.delete(address);
    // Nobody reads the counts of a VM without peers (one worker): two shared-data writes per
    // request saved. Its tick publishes no counts either (publish), so a peer that joins
    // before this VM learns of it sees none for up to a tick, never a count that outlived its
    // request.
    if (this.peers.size > 0) this.publish(now);
  }

  /** Joins the registry, learns the other VMs and reads them (tick does all three). */
  private register(now: u64): void {
    this.id = now.toString();
    this.entryKey = String.UTF8.encode(PREFIX + this.id);
    this.tick();
  }

  /** "time_ns\naddress count\n..." under this VM's key; the time alone while it knows no peer. */
  private publish(now: u64): void {
    if (this.id.length == 0) return; // not registered yet (before its first decision)
    const keys = this.peers.size > 0 ? this.own.keys() : new Array<string>();
    let size = 21; // the time's digits and its newline
    for (let i = 0; i < keys.length; i++) size += keys[i].length + 13;
    if (size > this.entry.byteLength) this.entry = new Uint8Array(size * 2);
    const out = this.entry;
    let n = writeDigits(out, 0, now);
    out[n++] = 0x0a;
    for (let i = 0; i < keys.length; i++) {
      const address = keys[i]; // host:port, ASCII
      for (let j = 0; j < address.length; j++) out[n++] = <u8>address.charCodeAt(j);
      out[n++] = 0x20;
      n = writeDigits(out, n, <u64>this.own.get(address));
      out[n++] = 0x0a;
    }
    setSharedRaw(this.entryKey, out.dataStart, n);
  }

  /** Every tick: renew this VM's entry, make sure it is registered, learn the other VMs. A lost
   * update (two VMs creating the registry at once) heals on a later tick. */
  tick(): void {
    if (this.id.length == 0) return; // no decision here yet
    const registry = getShared(REGISTRY_KEY);
    const text = registry == null ? "" : String.UTF8.decodeUnsafe(registry.value.dataStart, registry.value.byteLength);
    const ids = text.length > 0 ? text.split("\n") : new Array<string>();
    if (!ids.includes(this.id)) {
      setShared(REGISTRY_KEY, String.UTF8.encode(text.length > 0 ? text + "\n" + this.id : this.id), registry == null ? 0 : registry.cas);
    }
    const peers = new Map<string, Peer>();
    for (let i = 0; i < ids.length; i++) {
      if (ids[i] == this.id) continue;
      peers.set(ids[i], this.peers.has(ids[i]) ? this.peers.get(ids[i]) : new Peer());
    }
    this.peers = peers;
    // After learning the peers: a VM that just learned of one publishes its counts at once.
    this.publish(nowNanos());
    this.refresh();
  }

  /** Re-reads the other VMs' counts (before a decision); parses only entries that changed. */
  refresh(): void {
    if (this.id.length == 0) {
      this.register(nowNanos());
      return;
    }
    if (this.peers.size == 0) return; // one worker: nothing to read (and no keys array made)
    const ids = this.peers.keys();
    let changed = false;
    const now = nowNanos();
    for (let i = 0; i < ids.length; i++) {
      const peer = this.peers.get(ids[i]);
      const entry = getShared(PREFIX + ids[i]);
      if (entry == null || entry.cas == peer.cas) continue;
      changed = true;
      peer.cas = entry.cas;
      const counts = new Map<string, i32>();
      const lines = String.UTF8.decodeUnsafe(entry.value.dataStart, entry.value.byteLength).split("\n");
      if (lines.length > 0 && now - U64.parseInt(lines[0]) <= GONE_AFTER_NS) {
        for (let j = 1; j < lines.length; j++) {
          const space = lines[j].lastIndexOf(" ");
          if (space > 0) counts.set(lines[j].substring(0, space), <i32>I32.parseInt(lines[j].substring(space + 1)));
        }
      }
      peer.counts = counts;
    }
    if (!changed) return;
    const others = new Map<string, i32>();
    for (let i = 0; i < ids.length; i++) {
      const counts = this.peers.get(ids[i]).counts;
      const addresses = counts.keys();
      for (let j = 0; j < addresses.length; j++) {
        const a = addresses[j];
        others.set(a, (others.has(a) ? others.get(a) : 0) + counts.get(a));
      }
    }
    this.others = others;
  }
}
