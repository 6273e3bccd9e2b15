// Without the CUDA path, device memory does not exist; asking for it is a clear error.
#ifndef MUE_HAVE_CUDA
#include <cstddef>

#include "core/error.h"

namespace mue::cuda {
void* device_alloc(size_t bytes) { fail("device memory requested (", bytes, " bytes) but mue was built without CUDA"); }
void device_free(void*) {}
}  // namespace mue::cuda
#endif
