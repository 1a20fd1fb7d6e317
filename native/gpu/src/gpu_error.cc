#include "gpu_error.h"

namespace fractos_gpu {

namespace {
struct CuCode {
  int result;
  const char* code;
};
// The one CUresult table (values from cuda.h, CUDA 13; stable across versions).
constexpr CuCode kCuCodes[] = {
    {0, "OK"},           // CUDA_SUCCESS
    {1, "EINVAL"},       // CUDA_ERROR_INVALID_VALUE
    {2, "ENOSPC"},       // CUDA_ERROR_OUT_OF_MEMORY
    {3, "ENODEV"},       // CUDA_ERROR_NOT_INITIALIZED
    {4, "ENODEV"},       // CUDA_ERROR_DEINITIALIZED
    {34, "ENODEV"},      // CUDA_ERROR_STUB_LIBRARY
    {35, "ENODEV"},      // CUDA_ERROR_INSUFFICIENT_DRIVER
    {46, "ENODEV"},      // CUDA_ERROR_DEVICE_UNAVAILABLE
    {100, "ENODEV"},     // CUDA_ERROR_NO_DEVICE
    {101, "ENODEV"},     // CUDA_ERROR_INVALID_DEVICE
    {200, "ENOTSUP"},    // CUDA_ERROR_INVALID_IMAGE
    {201, "EINVAL"},     // CUDA_ERROR_INVALID_CONTEXT
    {209, "ENOTSUP"},    // CUDA_ERROR_NO_BINARY_FOR_GPU
    {218, "ENOTSUP"},    // CUDA_ERROR_INVALID_PTX
    {221, "ENOTSUP"},    // CUDA_ERROR_JIT_COMPILER_NOT_FOUND
    {222, "ENOTSUP"},    // CUDA_ERROR_UNSUPPORTED_PTX_VERSION
    {400, "EINVAL"},     // CUDA_ERROR_INVALID_HANDLE
    {500, "ENOENT"},     // CUDA_ERROR_NOT_FOUND
    {600, "EAGAIN"},     // CUDA_ERROR_NOT_READY
    {700, "EFAULT"},     // CUDA_ERROR_ILLEGAL_ADDRESS
    {701, "ENOSPC"},     // CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES
    {702, "ETIMEDOUT"},  // CUDA_ERROR_LAUNCH_TIMEOUT
    {719, "EIO"},        // CUDA_ERROR_LAUNCH_FAILED
    {801, "ENOTSUP"},    // CUDA_ERROR_NOT_SUPPORTED
    {803, "ENODEV"},     // CUDA_ERROR_SYSTEM_DRIVER_MISMATCH
    {804, "ENODEV"},     // CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE
};

}  // namespace

const char* codeFromCuResult(int result) {
  for (const auto& c : kCuCodes)
    if (c.result == result) return c.code;
  return "EIO";
}

}  // namespace fractos_gpu
