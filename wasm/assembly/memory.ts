// The host asks the module for memory to return buffers in (header values, bodies); abi.ts
// copies them out and frees them.
export function proxy_on_memory_allocate(size: usize): usize {
  return heap.alloc(size);
}
