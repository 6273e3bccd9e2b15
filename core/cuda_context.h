// The CUDA context (device, stream, cuBLAS handle, scratch buffers, uploads, the captured step graph, per-op
// timing), checked memory helpers and the fp32 <-> bf16 casts: what every CUDA op of nn/, moe/ and optim/ runs on.
#pragma once
#ifdef MUE_HAVE_CUDA
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"

typedef struct CUstream_st* cudaStream_t;
typedef struct cublasContext* cublasHandle_t;
typedef struct CUevent_st* cudaEvent_t;
typedef struct CUgraphExec_st* cudaGraphExec_t;

namespace mue::cuda {

bool gpu_available();  // CUDA device 0 can run mue's kernels (compute capability 9.0)
const std::string& gpu_unusable_reason();  // why not ("" when it can)
int device_count();  // CUDA devices this process sees (0 without any)

class Context {
 public:
  explicit Context(int device = 0);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  std::string device_name() const;
  int device() const { return device_; }
  // Grow-only scratch buffers that ops use for temporaries (slot keeps concurrent users apart).
  void* scratch(int slot, size_t bytes);
  void synchronize();
  size_t memory_used() const;  // bytes in use on the device (all of it: context, cuBLAS, our buffers)
  // Host -> device copies queued on the stream from a pinned staging buffer, so that the host does not wait
  // for the device: upload_async copies `src` into the buffer at once; begin_uploads() (once per step) waits
  // until the copies queued since the last begin_uploads have been made, then reuses the buffer from its start.
  void begin_uploads();
  void upload_async(void* dst, const void* src, size_t bytes);
  // One CUDA graph: capture_begin() starts recording the stream's launches (they do not run), capture_end()
  // instantiates them (false, and no graph, when something in between broke the capture, e.g. a call that
  // waits for the device), capture_abort() ends a capture after an error; graph_launch() replays the graph.
  // drop_graph() discards it: done whenever a buffer it may use is reallocated (a scratch slot growing), so a
  // replay never touches freed memory; has_graph() tells whether one is ready.
  void capture_begin();
  bool capture_end();
  void capture_abort();
  void graph_launch();
  void drop_graph();
  bool has_graph() const { return graph_ != nullptr; }

  // Per-op timing (`bench --profile`): while `profiling` is on, `auto _ = ctx.op("name")` brackets the op's
  // launches with an event pair; profile_collect() (after a sync) adds each pair's time to its name's total.
  class OpScope {
   public:
    OpScope(Context* c, int i) : c_(c), i_(i) {}
    ~OpScope();
    OpScope(const OpScope&) = delete;
    OpScope& operator=(const OpScope&) = delete;

   private:
    Context* c_;
    int i_;
  };
  OpScope op(const char* name) { return OpScope(this, profiling ? op_begin(name) : -1); }
  bool profiling = false;
  struct OpTotal {
    std::string name;
    double ms = 0;
    long calls = 0;
  };
  void profile_collect();
  const std::vector<OpTotal>& profile_totals() const { return totals_; }

 private:
  int op_begin(const char* name);
  struct Pending {
    const char* name;
    cudaEvent_t start, end;
  };
  std::vector<Pending> pending_;
  std::vector<cudaEvent_t> events_;  // pool: 2 per pending op, reused every collect
  std::vector<OpTotal> totals_;
  int device_ = 0;
  void* stage_ = nullptr;  // pinned
  size_t stage_bytes_ = 0, stage_used_ = 0;
  cudaEvent_t stage_done_ = nullptr;  // recorded after the last queued upload
  cudaGraphExec_t graph_ = nullptr;
  static constexpr size_t kCublasWorkspace = size_t(32) << 20;
  void* cublas_ws_ = nullptr;
  void* scratch_[8] = {};
  size_t scratch_bytes_[8] = {};
};

// Memory helpers (checked).
void* device_alloc(size_t bytes);
void device_free(void* p);
// Device memory that mue itself holds (device_alloc and the scratch slots; not the CUDA context, cuBLAS's own
// or NCCL's), now and at its peak since the process began: the counterpart of PyTorch's memory_allocated and
// max_memory_allocated, for comparing the two the same way.
size_t allocated_bytes();
size_t peak_allocated_bytes();
void copy_to_device(void* dst, const void* src, size_t bytes);
void copy_to_host(void* dst, const void* src, size_t bytes);
void memset_zero(Context& ctx, void* p, size_t bytes);

// fp32 -> bf16 conversion of n elements (used to refresh the bf16 weight shadow after init or load).
void cast_f32_to_bf16(Context& ctx, const float* in, bf16* out, size_t n);
void cast_bf16_to_f32(Context& ctx, const bf16* in, float* out, size_t n);

}  // namespace mue::cuda
#endif  // MUE_HAVE_CUDA
