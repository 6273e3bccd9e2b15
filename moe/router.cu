// The MoE router on the GPU, forward and backward, with the dispatch plan (same semantics as the CPU references
// router_forward, balance_loss, z_loss, router_backward of moe/ops/router.h and dispatch_plan of moe/ops/dispatch.h).
// Nothing of size [N, E] leaves the device; the host reads one small plan (E+1 offsets and 4 statistics) per layer and step.
//
// Forward, five launches (the plan is split in a block per expert and one block for the totals: one block
// walking all chunks serially was the slowest of the router's passes):
//   1. router_forward_kernel, one warp per token: scores (softmax or sigmoid, fp32), top-a per group on the
//      logits (the order of the scores, and exact in bf16, so the choice matches the CPU reference bit for bit;
//      ties to the lower index), gates r * s_k / sum_chosen s, per-token entropy, sum l^2 and lse^2.
//      traffic: read N*E bf16, write N*E fp32 + N*a (idx, gates) + 3N fp32
//   2. router_chunks_kernel, one warp per chunk of kChunkTokens tokens: the chunk's assignment count per expert
//      (warp match on the expert ids, in (token, slot) order), its score column sums and statistics sums.
//      traffic: read N*E fp32 (coalesced rows) + N*a int32 + 3N, write 2 * chunks * E + 3 * chunks
//   3. router_columns_kernel, one block per expert: the chunks' counts turned into exclusive bases (in place),
//      the expert's total count and score sum (block scan and reduction).
//   4. router_plan_kernel, one block: offsets = exclusive scan of the counts; the layer's statistics (balance
//      loss, z loss, mean entropy, logits RMS). Every sum runs in a fixed order (deterministic).
//   5. dispatch_rows_kernel, one warp per chunk again: assignment i of expert e gets row offset[e] + the chunk's
//      base + its rank among e's assignments before it in the chunk -> src_token, slot_row (stable, like the CPU).
//      traffic: read N*a int32 + chunks * E, write 2 N*a int32
// Every pass over the assignments runs on all chunks at once (no block walks all N*a of them).
// Backward, one launch: router_backward_kernel, one warp per token: gate gradients -> score gradients (+ the
// balance term coef*E*f_e/N) -> logits gradients through softmax or sigmoid (+ the z-loss term).
//      traffic: read N*E (scores fp32, logits bf16 when z_coef > 0) + N*a, write N*E bf16

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include "core/cuda_util.cuh"
#include "moe/ops/router.h"

namespace mue::cuda {

using namespace detail;

namespace {
constexpr int kWarps = 4;  // tokens per block in the per-token kernels

// The top-a key of logit x of expert e (E <= 1024 < 2^16): the bf16 bits mapped so that unsigned order is the
// value's order (-0 as +0), expert index inverted in the low half; 0 for NaN, which never wins.
__device__ inline unsigned topk_key(bf x, int e) {
  unsigned u = __bfloat16_as_ushort(x);
  if (u == 0x8000u) u = 0;
  if ((u & 0x7FFFu) > 0x7F80u) return 0;
  const unsigned ordered = (u & 0x8000u) ? (~u & 0xFFFFu) : (u | 0x8000u);
  return ordered << 16 | (0xFFFFu - unsigned(e));
}

// Per-warp shared row: E floats of logits (then their top-a keys, chosen ones zeroed) and E floats of scores.
__global__ void router_forward_kernel(const bf* logits, float* scores, int32_t* idx, bf* gates, float* rowstat,
                                      RouterDims d) {
  extern __shared__ float smem[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int n = blockIdx.x * kWarps + warp;
  if (n >= d.N) return;
  const int E = d.E, a = d.active;
  float* lg = smem + size_t(warp) * 2 * E;
  float* sc = lg + E;
  const bf* l = logits + size_t(n) * E;
  float mx = -INFINITY, ss = 0.f;
  for (int e = lane; e < E; e += 32) {
    const float x = __bfloat162float(l[e]);
    lg[e] = x, mx = fmaxf(mx, x), ss += x * x;
  }
  mx = warp_reduce(mx, MaxOp{});
  ss = warp_reduce(ss, SumOp{});
  __syncwarp();
  float z = 0.f;
  for (int e = lane; e < E; e += 32) z += expf(lg[e] - mx);
  const float lse = logf(warp_reduce(z, SumOp{})) + mx;
  float ent = 0.f;
  for (int e = lane; e < E; e += 32) {
    const float s = d.sigmoid ? 1.f / (1.f + expf(-lg[e])) : expf(lg[e] - lse);
    sc[e] = s, scores[size_t(n) * E + e] = s;
    if (s > 0.f) ent -= s * logf(s);
  }
  ent = warp_reduce(ent, SumOp{});
  __syncwarp();
  // Top-a: a/G from each group; every lane ends each round with the same winner. The logits become 32-bit keys
  // (the bf16 bits made orderable, then 0xFFFF - e: larger logit first, ties to the lower index, as the float
  // comparison of the CPU reference), so that one warp max per round finds the winner.
  unsigned* key = reinterpret_cast<unsigned*>(lg);
  for (int e = lane; e < E; e += 32) key[e] = topk_key(l[e], e);  // each lane its own entries: no sync needed
  __syncwarp();
  const int per_group = E / d.groups, take = a / d.groups;
  int32_t* my_idx = idx + size_t(n) * a;
  float S = 0.f;
  for (int g = 0; g < d.groups; ++g)
    for (int k = 0; k < take; ++k) {
      unsigned best = 0;
      for (int e = g * per_group + lane; e < (g + 1) * per_group; e += 32) best = max(best, key[e]);
      best = __reduce_max_sync(0xffffffffu, best);
      // best == 0: every logit left is NaN (the run is diverging anyway)
      const int bi = best ? int(0xFFFFu - (best & 0xFFFFu)) : g * per_group + k;
      S += sc[bi];
      __syncwarp();
      if (lane == 0) my_idx[g * take + k] = bi, key[bi] = 0;  // chosen: never wins again
      __syncwarp();
    }
  for (int k = lane; k < a; k += 32) gates[size_t(n) * a + k] = __float2bfloat16(float(d.route_scale) * sc[my_idx[k]] / S);
  if (lane == 0) {
    rowstat[size_t(n) * 3 + 0] = ent;
    rowstat[size_t(n) * 3 + 1] = ss;
    rowstat[size_t(n) * 3 + 2] = lse * lse;
  }
}

constexpr int kChunkTokens = 32;  // tokens per chunk of the counting and dispatch passes
__host__ __device__ int chunk_count(int N) { return (N + kChunkTokens - 1) / kChunkTokens; }

// Walks chunk c's assignments (tokens c*kChunkTokens.., every slot, in order) 32 at a time with one warp:
// visit(i, e, rank) for each lane's assignment, rank = how many earlier assignments of the chunk chose e
// (cnt[e] before this group + earlier lanes of the group with the same e); cnt ends as the chunk's counts.
template <class Visit>
__device__ void walk_chunk(const int32_t* idx, int c, const RouterDims& d, int* cnt, Visit visit) {
  const int lane = threadIdx.x & 31;
  for (int e = lane; e < d.E; e += 32) cnt[e] = 0;
  __syncwarp();
  const int i0 = c * kChunkTokens * d.active, i1 = min(d.N, (c + 1) * kChunkTokens) * d.active;
  for (int base = i0; base < i1; base += 32) {
    const int i = base + lane;
    const int e = i < i1 ? idx[i] : -1;  // idle lanes group among themselves and do nothing
    const unsigned peers = __match_any_sync(0xffffffffu, e);
    if (e >= 0) {
      visit(i, e, cnt[e] + __popc(peers & ((1u << lane) - 1u)));
    }
    __syncwarp();  // every lane has read cnt[e] before the group's first lane adds the group's size
    if (e >= 0 && (peers & ((1u << lane) - 1u)) == 0) cnt[e] += __popc(peers);
    __syncwarp();
  }
}

// ccount[c][e] = assignments of expert e in chunk c, ccolsum[c][e] = sum of the chunk's scores[n][e], cstat[c]
// = the chunk's sums of the per-token statistics (entropy, sum l^2, lse^2).
__global__ void router_chunks_kernel(const float* scores, const int32_t* idx, const float* rowstat, int32_t* ccount,
                                     float* ccolsum, float* cstat, RouterDims d) {
  extern __shared__ int cnt_smem[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, c = blockIdx.x * kWarps + warp;
  if (c >= chunk_count(d.N)) return;
  int* cnt = cnt_smem + warp * d.E;
  walk_chunk(idx, c, d, cnt, [](int, int, int) {});
  const int n0 = c * kChunkTokens, n1 = min(d.N, n0 + kChunkTokens);
  for (int e = lane; e < d.E; e += 32) {
    float p = 0.f;
    #pragma unroll 8
    for (int n = n0; n < n1; ++n) p += scores[size_t(n) * d.E + e];
    ccount[size_t(c) * d.E + e] = cnt[e];
    ccolsum[size_t(c) * d.E + e] = p;
  }
  static_assert(kChunkTokens == 32, "a lane per token of the chunk");
  const int n = n0 + lane;
  for (int k = 0; k < 3; ++k) {
    const float v = warp_reduce(n < n1 ? rowstat[size_t(n) * 3 + k] : 0.f, SumOp{});
    if (lane == 0) cstat[size_t(c) * 3 + k] = v;
  }
}

// One block per expert e: ccount's column e becomes the exclusive sums over the chunks before (each chunk's base
// within e's rows); ecount[e], ecolsum[e] = the column's totals. Each thread takes a run of chunks; block scan
// and reduction in a fixed order.
constexpr int kColumnThreads = 256;
__global__ void router_columns_kernel(int32_t* ccount, const float* ccolsum, int32_t* ecount, float* ecolsum,
                                      RouterDims d) {
  using Scan = cub::BlockScan<int32_t, kColumnThreads>;
  using Reduce = cub::BlockReduce<float, kColumnThreads>;
  __shared__ union {
    typename Scan::TempStorage scan;
    typename Reduce::TempStorage reduce;
  } tmp;
  const int e = blockIdx.x, C = chunk_count(d.N), per = (C + kColumnThreads - 1) / kColumnThreads;
  const int c0 = min(C, int(threadIdx.x) * per), c1 = min(C, c0 + per);
  int32_t run = 0;
  float cs = 0.f;
  for (int c = c0; c < c1; ++c) run += ccount[size_t(c) * d.E + e], cs += ccolsum[size_t(c) * d.E + e];
  int32_t base, total;
  Scan(tmp.scan).ExclusiveSum(run, base, total);
  __syncthreads();  // tmp is reused
  const float colsum = Reduce(tmp.reduce).Sum(cs);
  for (int c = c0; c < c1; ++c) {
    const size_t k = size_t(c) * d.E + e;
    const int32_t n = ccount[k];
    ccount[k] = base, base += n;
  }
  if (threadIdx.x == 0) ecount[e] = total, ecolsum[e] = colsum;
}

// plan: [0, E] offsets, then the bits of 4 floats: balance loss, z loss, mean entropy, logits RMS; every sum in
// a fixed order (deterministic).
__global__ void router_plan_kernel(const float* cstat, const int32_t* ecount, const float* ecolsum, int32_t* plan,
                                   RouterDims d) {
  __shared__ int32_t count[1024];
  __shared__ float colsum[1024];
  for (int e = threadIdx.x; e < d.E; e += blockDim.x) count[e] = ecount[e], colsum[e] = ecolsum[e];
  float ent = 0.f, ss = 0.f, lse2 = 0.f;
  for (int c = threadIdx.x; c < chunk_count(d.N); c += blockDim.x)
    ent += cstat[size_t(c) * 3], ss += cstat[size_t(c) * 3 + 1], lse2 += cstat[size_t(c) * 3 + 2];
  ent = block_reduce(ent, SumOp{}, 0.f);  // block_reduce synchronizes the block: count, colsum are complete
  ss = block_reduce(ss, SumOp{}, 0.f);
  lse2 = block_reduce(lse2, SumOp{}, 0.f);
  if (threadIdx.x == 0) {
    const double N = d.N, R = double(d.N) * d.active;
    double fp = 0;
    int32_t off = 0;
    for (int e = 0; e < d.E; ++e) {
      plan[e] = off, off += count[e];
      fp += (count[e] / R) * (colsum[e] / N);
    }
    plan[d.E] = off;
    plan[d.E + 1] = __float_as_int(float(d.balance_coef * d.E * fp));
    plan[d.E + 2] = __float_as_int(float(d.z_coef * lse2 / N));
    plan[d.E + 3] = __float_as_int(float(ent / N));
    plan[d.E + 4] = __float_as_int(sqrtf(ss / float(N * d.E)));
  }
}

// Stable compaction: expert e's assignments i (in order) get rows plan[e], plan[e]+1, ...
__global__ void dispatch_rows_kernel(const int32_t* idx, const int32_t* plan, const int32_t* cbase,
                                     int32_t* src_token, int32_t* slot_row, RouterDims d) {
  extern __shared__ int cnt_smem[];
  const int warp = threadIdx.x >> 5, c = blockIdx.x * kWarps + warp;
  if (c >= chunk_count(d.N)) return;
  const int32_t* base = cbase + size_t(c) * d.E;
  walk_chunk(idx, c, d, cnt_smem + warp * d.E, [&](int i, int e, int rank) {
    const int row = plan[e] + base[e] + rank;
    src_token[row] = i / d.active;
    slot_row[i] = row;
  });
}

__global__ void router_backward_kernel(const bf* dgates, const bf* logits, const float* scores, const int32_t* idx,
                                       const int32_t* plan, bf* dlogits, RouterDims d) {
  extern __shared__ float smem[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int n = blockIdx.x * kWarps + warp;
  if (n >= d.N) return;
  const int E = d.E, a = d.active;
  float* ds = smem + size_t(warp) * E;
  const float* s = scores + size_t(n) * E;
  // Balance loss: d/ds[n,e] = coef * E * f_e / N with f_e = count_e / (N a).
  const float bal = float(d.balance_coef * E / (double(d.N) * d.N * a));
  for (int e = lane; e < E; e += 32) ds[e] = bal * float(plan[e + 1] - plan[e]);
  // Gates w_k = r s_k / S:  dL/ds_j += r (dw_j / S - sum_k dw_k s_k / S^2)
  const int32_t* my_idx = idx + size_t(n) * a;
  const bf* dg = dgates + size_t(n) * a;
  float S = 0.f, dot = 0.f;
  for (int k = lane; k < a; k += 32) {
    const float sk = s[my_idx[k]];
    S += sk, dot += __bfloat162float(dg[k]) * sk;
  }
  S = warp_reduce(S, SumOp{});
  dot = warp_reduce(dot, SumOp{});
  __syncwarp();
  for (int k = lane; k < a; k += 32)  // distinct experts: no two lanes touch the same entry
    ds[my_idx[k]] += float(d.route_scale) * (__bfloat162float(dg[k]) / S - dot / (S * S));
  __syncwarp();
  float sds = 0.f;
  if (!d.sigmoid) {
    for (int e = lane; e < E; e += 32) sds += s[e] * ds[e];
    sds = warp_reduce(sds, SumOp{});
  }
  float lse = 0.f, zc = 0.f;
  const bf* l = logits + size_t(n) * E;
  if (d.z_coef > 0) {
    float mx = -INFINITY, z = 0.f;
    for (int e = lane; e < E; e += 32) mx = fmaxf(mx, __bfloat162float(l[e]));
    mx = warp_reduce(mx, MaxOp{});
    for (int e = lane; e < E; e += 32) z += expf(__bfloat162float(l[e]) - mx);
    lse = logf(warp_reduce(z, SumOp{})) + mx;
    zc = float(d.z_coef * 2.0 / d.N);
  }
  for (int e = lane; e < E; e += 32) {
    float g = d.sigmoid ? ds[e] * s[e] * (1.f - s[e]) : s[e] * (ds[e] - sds);
    if (zc != 0.f) g += zc * lse * expf(__bfloat162float(l[e]) - lse);
    dlogits[size_t(n) * E + e] = __float2bfloat16(g);
  }
}

unsigned token_blocks(int N) { return unsigned((N + kWarps - 1) / kWarps); }
}  // namespace

void router_forward(Context& ctx, const RouterDims& d, const bf16* logits, float* scores, int32_t* idx, bf16* gates,
                    int32_t* src_token, int32_t* slot_row, int32_t* plan) {
  MUE_CHECK(d.N > 0 && d.E > 0 && d.active > 0 && d.groups > 0 && d.E % d.groups == 0 && d.active % d.groups == 0 &&
                d.active <= d.E && d.E <= 1024,
            "router_forward: bad dims N=", d.N, " E=", d.E, " a=", d.active, " groups=", d.groups);
  const size_t C = size_t(chunk_count(d.N)), table = C * d.E;  // per chunk and expert: count (then base), sum
  const size_t floats = 3 * size_t(d.N) + table + 3 * C + d.E, ints = table + d.E;
  char* tmp = static_cast<char*>(ctx.scratch(6, sizeof(float) * floats + sizeof(int32_t) * ints));
  float* rowstat = reinterpret_cast<float*>(tmp);
  float* ccolsum = rowstat + 3 * size_t(d.N);
  float* cstat = ccolsum + table;
  float* ecolsum = cstat + 3 * C;
  int32_t* ccount = reinterpret_cast<int32_t*>(ecolsum + d.E);
  int32_t* ecount = ccount + table;
  router_forward_kernel<<<token_blocks(d.N), kWarps * 32, sizeof(float) * 2 * d.E * kWarps, ctx.stream>>>(
      B(logits), scores, idx, B(gates), rowstat, d);
  check_launch("router_forward_kernel");
  const unsigned chunk_blocks = unsigned((C + kWarps - 1) / kWarps);
  const size_t cnt_smem = sizeof(int) * size_t(d.E) * kWarps;
  router_chunks_kernel<<<chunk_blocks, kWarps * 32, cnt_smem, ctx.stream>>>(scores, idx, rowstat, ccount, ccolsum,
                                                                           cstat, d);
  check_launch("router_chunks_kernel");
  router_columns_kernel<<<d.E, kColumnThreads, 0, ctx.stream>>>(ccount, ccolsum, ecount, ecolsum, d);
  check_launch("router_columns_kernel");
  router_plan_kernel<<<1, 1024, 0, ctx.stream>>>(cstat, ecount, ecolsum, plan, d);
  check_launch("router_plan_kernel");
  dispatch_rows_kernel<<<chunk_blocks, kWarps * 32, cnt_smem, ctx.stream>>>(idx, plan, ccount, src_token, slot_row,
                                                                           d);
  check_launch("dispatch_rows_kernel");
}

void router_backward(Context& ctx, const RouterDims& d, const bf16* dgates, const bf16* logits, const float* scores,
                     const int32_t* idx, const int32_t* plan, bf16* dlogits) {
  router_backward_kernel<<<token_blocks(d.N), kWarps * 32, sizeof(float) * d.E * kWarps, ctx.stream>>>(
      B(dgates), B(logits), scores, idx, plan, B(dlogits), d);
  check_launch("router_backward_kernel");
}

}  // namespace mue::cuda
