// Typed errors of the fractos_gpu addon: a code string from libfractos/errors.ts
// (ERROR_CODES) and a message. One table maps CUresult to codes; host failures name their
// code directly (ENOSPC for an allocation). errno numbers are mapped in one place only:
// libfractos/errors.ts (errorCodeFromErrno / errnoFromCode).
#pragma once

#include <stdexcept>
#include <string>

namespace fractos_gpu {

class GpuError : public std::runtime_error {
 public:
  GpuError(const char* code, const std::string& msg) : std::runtime_error(msg), code_(code) {}
  const char* code() const { return code_; }

 private:
  const char* code_;  // static string
};

// CUresult (numeric, so it compiles without cuda.h) -> code. Unknown results -> "EIO".
const char* codeFromCuResult(int result);

[[noreturn]] inline void fail(const char* code, const std::string& msg) { throw GpuError(code, msg); }

}  // namespace fractos_gpu
