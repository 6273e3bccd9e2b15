// The CUDA context (device, stream, cuBLAS handle, scratch buffers), checked memory helpers and the
// fp32 <-> bf16 cast kernels.
#include <algorithm>
#include <cstring>
#include <cstdio>
#include <mutex>
#include <string>
#include <unordered_map>

#include "core/cuda_util.cuh"
#include "core/cuda_context.h"

namespace mue::cuda {

using namespace detail;

namespace {
// "1.2 GB", "384 KB", "12 bytes": sizes in error messages.
std::string human_bytes(size_t b) {
  char s[32];
  if (b >= (size_t(1) << 30)) std::snprintf(s, sizeof s, "%.1f GB", double(b) / double(size_t(1) << 30));
  else if (b >= (size_t(1) << 20)) std::snprintf(s, sizeof s, "%.1f MB", double(b) / double(size_t(1) << 20));
  else if (b >= (size_t(1) << 10)) std::snprintf(s, sizeof s, "%.1f KB", double(b) / 1024.0);
  else std::snprintf(s, sizeof s, "%zu bytes", b);
  return s;
}

// out[i] = bf16(in[i]) (round to nearest even)   traffic: read 4n, write 2n bytes
__global__ void cast_f32_to_bf16_kernel(const float* in, bf* out, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    out[i] = __float2bfloat16_rn(in[i]);
}
// out[i] = float(in[i]) (exact)   traffic: read 2n, write 4n bytes
__global__ void cast_bf16_to_f32_kernel(const bf* in, float* out, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    out[i] = __bfloat162float(in[i]);
}
// What mue holds on the device (allocated_bytes): every cudaMalloc of ours goes through these two.
struct Held {
  std::mutex mu;
  std::unordered_map<void*, size_t> sizes;
  size_t now = 0, peak = 0;
};
Held& held() {
  static Held h;
  return h;
}
void* tracked_malloc(size_t bytes, const char* what) {
  void* p = nullptr;
  check(cudaMalloc(&p, bytes), "cudaMalloc(", what, human_bytes(bytes), ")");
  Held& h = held();
  std::lock_guard lock(h.mu);
  h.sizes[p] = bytes, h.now += bytes, h.peak = std::max(h.peak, h.now);
  return p;
}
cudaError_t tracked_free(void* p) {
  if (!p) return cudaSuccess;
  {
    Held& h = held();
    std::lock_guard lock(h.mu);
    if (auto it = h.sizes.find(p); it != h.sizes.end()) h.now -= it->second, h.sizes.erase(it);
  }
  return cudaFree(p);
}
}  // namespace

const std::string& gpu_unusable_reason() {
  static const std::string why = []() -> std::string {
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      return std::string("no CUDA device (") + cudaGetErrorString(e) + ")";
    }
    if (n == 0) return "no CUDA device";
    // The kernels are built for sm_90a (wgmma, TMA, setmaxnreg), whose code runs on compute capability 9.0 only.
    cudaDeviceProp p{};
    if (cudaGetDeviceProperties(&p, 0) != cudaSuccess) {
      (void)cudaGetLastError();
      return "cannot read the properties of CUDA device 0";
    }
    if (p.major != 9 || p.minor != 0)
      return "CUDA device 0 (" + std::string(p.name) + ") has compute capability " + std::to_string(p.major) + "." +
             std::to_string(p.minor) + "; mue's kernels are built for sm_90a (H100, H200)";
    return "";
  }();
  return why;
}

bool gpu_available() { return gpu_unusable_reason().empty(); }

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) (void)cudaGetLastError(), n = 0;
  return n;
}

Context::Context(int device) : device_(device) {
  check(cudaSetDevice(device), "cudaSetDevice(", device, ")");
  // A blocking stream: the synchronous cudaMemcpy of copy_to_device / copy_to_host (legacy default stream)
  // stays ordered with the kernels queued here.
  check(cudaStreamCreate(&stream), "cudaStreamCreate");
  check_cublas(cublasCreate(&cublas), "cublasCreate");
  check_cublas(cublasSetStream(cublas, stream), "cublasSetStream");
  // Our own cuBLAS workspace (32 MiB, cuBLAS's default on Hopper): nothing is allocated while a graph captures.
  cublas_ws_ = device_alloc(kCublasWorkspace);
  check_cublas(cublasSetWorkspace(cublas, cublas_ws_, kCublasWorkspace), "cublasSetWorkspace");
}

Context::~Context() {
  // No throwing from a destructor: errors here are ignored (the process is usually going down with them).
  for (int i = 0; i < 8; ++i)
    if (scratch_[i]) (void)tracked_free(scratch_[i]);
  for (cudaEvent_t e : events_) (void)cudaEventDestroy(e);
  if (stage_done_) (void)cudaEventDestroy(stage_done_);
  if (graph_) (void)cudaGraphExecDestroy(graph_);
  if (stage_) (void)cudaFreeHost(stage_);
  if (cublas) (void)cublasDestroy(cublas);
  device_free(cublas_ws_);
  if (stream) (void)cudaStreamDestroy(stream);
  (void)cudaGetLastError();
}

std::string Context::device_name() const {
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, device_), "cudaGetDeviceProperties(", device_, ")");
  return prop.name;
}


size_t allocated_bytes() {
  std::lock_guard lock(held().mu);
  return held().now;
}
size_t peak_allocated_bytes() {
  std::lock_guard lock(held().mu);
  return held().peak;
}

void* Context::scratch(int slot, size_t bytes) {
  MUE_CHECK(slot >= 0 && slot < 8, "scratch slot ", slot, " out of range [0, 8)");
  if (bytes > scratch_bytes_[slot]) {
    drop_graph();  // it holds the old buffer's address
    // cudaFree waits for the device, so kernels still reading the old buffer finish first.
    if (scratch_[slot]) check(tracked_free(scratch_[slot]), "cudaFree(scratch ", slot, ")");
    scratch_[slot] = nullptr;
    scratch_bytes_[slot] = 0;
    const size_t grown = bytes + bytes / 8;  // a little headroom so slowly growing requests do not thrash
    scratch_[slot] = tracked_malloc(grown, "scratch, ");
    scratch_bytes_[slot] = grown;
  }
  return scratch_[slot];
}

size_t Context::memory_used() const {
  size_t free_b = 0, total_b = 0;
  check(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo");
  return total_b - free_b;
}

int Context::op_begin(const char* name) {
  const size_t i = pending_.size();
  while (events_.size() < 2 * (i + 1)) {
    cudaEvent_t e;
    check(cudaEventCreate(&e), "cudaEventCreate");
    events_.push_back(e);
  }
  pending_.push_back({name, events_[2 * i], events_[2 * i + 1]});
  check(cudaEventRecord(pending_.back().start, stream), "cudaEventRecord");
  return int(i);
}

Context::OpScope::~OpScope() {
  if (i_ >= 0) (void)cudaEventRecord(c_->pending_[size_t(i_)].end, c_->stream);
}

void Context::profile_collect() {
  synchronize();
  for (const Pending& p : pending_) {
    float ms = 0;
    check(cudaEventElapsedTime(&ms, p.start, p.end), "cudaEventElapsedTime(", p.name, ")");
    auto it = std::find_if(totals_.begin(), totals_.end(), [&](const OpTotal& t) { return t.name == p.name; });
    if (it == totals_.end()) it = totals_.insert(totals_.end(), OpTotal{p.name});
    it->ms += ms, ++it->calls;
  }
  pending_.clear();
}

void Context::synchronize() { check(cudaStreamSynchronize(stream), "cudaStreamSynchronize"); }

void Context::drop_graph() {
  if (!graph_) return;
  synchronize();  // a replay may still be running
  check(cudaGraphExecDestroy(graph_), "cudaGraphExecDestroy");
  graph_ = nullptr;
}

void Context::capture_begin() {
  drop_graph();
  // Global mode: any call that could wait for the device (from any thread) fails instead of breaking the graph.
  check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), "cudaStreamBeginCapture");
}

bool Context::capture_end() {
  cudaGraph_t g = nullptr;
  cudaError_t e = cudaStreamEndCapture(stream, &g);
  if (e == cudaSuccess && g) {
    e = cudaGraphInstantiate(&graph_, g, 0);
    if (e != cudaSuccess) graph_ = nullptr;
  }
  if (g) (void)cudaGraphDestroy(g);
  (void)cudaGetLastError();  // a capture error is not sticky; clear it
  return e == cudaSuccess && graph_;
}

void Context::capture_abort() {
  cudaGraph_t g = nullptr;
  (void)cudaStreamEndCapture(stream, &g);
  if (g) (void)cudaGraphDestroy(g);
  (void)cudaGetLastError();
}

void Context::graph_launch() {
  MUE_CHECK(graph_, "graph_launch: no graph captured");
  check(cudaGraphLaunch(graph_, stream), "cudaGraphLaunch");
}

void Context::begin_uploads() {
  if (stage_done_) check(cudaEventSynchronize(stage_done_), "cudaEventSynchronize(uploads)");
  stage_used_ = 0;
}

void Context::upload_async(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  size_t at = (stage_used_ + 255) / 256 * 256;
  if (at + bytes > stage_bytes_) {
    // Room for twice this step's uploads so far (and never less than before), so that it happens once.
    const size_t grown = std::max({2 * (at + bytes), 2 * stage_bytes_, size_t(1) << 20});
    synchronize();  // the queued copies still read the old buffer
    if (stage_) check(cudaFreeHost(stage_), "cudaFreeHost(upload stage)");
    stage_ = nullptr, stage_bytes_ = 0, at = 0;
    check(cudaMallocHost(&stage_, grown), "cudaMallocHost(upload stage, ", human_bytes(grown), ")");
    stage_bytes_ = grown;
  }
  char* slot = static_cast<char*>(stage_) + at;
  std::memcpy(slot, src, bytes);
  check(cudaMemcpyAsync(dst, slot, bytes, cudaMemcpyHostToDevice, stream), "cudaMemcpyAsync(host to device, ",
        human_bytes(bytes), ")");
  stage_used_ = at + bytes;
  if (!stage_done_) check(cudaEventCreateWithFlags(&stage_done_, cudaEventDisableTiming), "cudaEventCreate");
  check(cudaEventRecord(stage_done_, stream), "cudaEventRecord(uploads)");
}

// Zero-filled, like the host arenas: optimizer moments and gradients start from 0.
void* device_alloc(size_t bytes) {
  if (bytes == 0) return nullptr;
  void* p = tracked_malloc(bytes, "");
  cudaError_t e = cudaMemset(p, 0, bytes);
  if (e != cudaSuccess) {
    (void)tracked_free(p);
    check(e, "cudaMemset(", human_bytes(bytes), ")");
  }
  return p;
}

// Never throws (it runs from destructors).
void device_free(void* p) {
  if (p && tracked_free(p) != cudaSuccess) (void)cudaGetLastError();
}

void copy_to_device(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  check(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy(host to device, ", human_bytes(bytes), ")");
}

void copy_to_host(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy(device to host, ", human_bytes(bytes), ")");
}

void memset_zero(Context& ctx, void* p, size_t bytes) {
  if (bytes == 0) return;
  check(cudaMemsetAsync(p, 0, bytes, ctx.stream), "cudaMemsetAsync(", human_bytes(bytes), ")");
}

void cast_f32_to_bf16(Context& ctx, const float* in, bf16* out, size_t n) {
  if (n == 0) return;
  cast_f32_to_bf16_kernel<<<grid_for(n, 256), 256, 0, ctx.stream>>>(in, B(out), n);
  check_launch("cast_f32_to_bf16_kernel");
}

void cast_bf16_to_f32(Context& ctx, const bf16* in, float* out, size_t n) {
  if (n == 0) return;
  cast_bf16_to_f32_kernel<<<grid_for(n, 256), 256, 0, ctx.stream>>>(B(in), out, n);
  check_launch("cast_bf16_to_f32_kernel");
}

}  // namespace mue::cuda
