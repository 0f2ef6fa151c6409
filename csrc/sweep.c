/* Sweep queues: which owners are young or middle-aged, shared by every
 * process, so a young sweep walks only the young. */
#include "sh_internal.h"

int sh_sweep_push(sh_arena_t *a, int ring, uint32_t id, uint32_t gen) {
  if (ring < 0 || ring >= SH_SWEEP_RINGS) return _sh_fail(SH_EINVAL, "sweep queue %d does not exist", ring);
  if (gen == 0) return _sh_fail(SH_EINVAL, "generation 0 names no owner");
  _Atomic uint64_t *tail = &a->hdr->ring_tail[ring];
  uint64_t t = sh_atomic_load_relaxed(tail);
  do {
    if (t - sh_atomic_load_acquire(&a->hdr->ring_head[ring]) >= a->ring_cap)
      return _sh_fail(SH_EFULL, "sweep queue %d is full (%llu entries)", ring, (unsigned long long)a->ring_cap);
  } while (!sh_atomic_cas_weak_acq_rel(tail, &t, t + 1));
  sh_atomic_store_release(&a->rings[(uint64_t)ring * a->ring_cap + t % a->ring_cap],
                          ((uint64_t)gen << 32) | id);
  return SH_OK;
}

int sh_sweep_take(sh_arena_t *a, int ring, uint64_t *entries, size_t max, size_t *taken) {
  *taken = 0;
  if (ring < 0 || ring >= SH_SWEEP_RINGS) return _sh_fail(SH_EINVAL, "sweep queue %d does not exist", ring);
  _Atomic uint64_t *head = &a->hdr->ring_head[ring];
  uint64_t h = sh_atomic_load_relaxed(head), n;
  do {
    uint64_t t = sh_atomic_load_acquire(&a->hdr->ring_tail[ring]);
    n = t - h < max ? t - h : max;
    if (n == 0) return SH_OK;
  } while (!sh_atomic_cas_weak_acq_rel(head, &h, h + n));
  _Atomic uint64_t *slots = &a->rings[(uint64_t)ring * a->ring_cap];
  size_t k = 0;
  for (uint64_t i = h; i < h + n; i++) {
    uint64_t e = 0;
    /* a producer reserves a slot before it fills it: give it a moment */
    for (int spin = 0; spin < 1000 && (e = sh_atomic_exchange_acq_rel(&slots[i % a->ring_cap], 0)) == 0; spin++) {
    }
    /* an owner recycled since it was queued (most of them, when agents
     * complete) is dropped here: its slot has moved on, and nothing of it is
     * left to sweep */
    if (e && sh_owner_generation(a, (uint32_t)e) == (uint32_t)(e >> 32)) entries[k++] = e;
  }
  *taken = k;
  return SH_OK;
}

uint64_t sh_sweep_pending(const sh_arena_t *a, int ring) {
  if (ring < 0 || ring >= SH_SWEEP_RINGS) return 0;
  return sh_atomic_load_acquire(&a->hdr->ring_tail[ring]) - sh_atomic_load_acquire(&a->hdr->ring_head[ring]);
}
