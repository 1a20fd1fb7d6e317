// fractos_shm: POSIX shared memory regions mapped as ArrayBuffers.
// The owner Process creates a region, its Controller opens the same name and maps it,
// so the Controller reads and writes registered Memory without waking the owner.
// Also the kernel's credentials of a unix-socket peer (SO_PEERCRED): the Controller takes a
// Process's pid from the kernel, never from its HELLO, and region names carry that pid; and
// flock(2), for the Controller's state-dir lock and the blockdev's device claims. And
// copyGuarded: a memmove that survives a region its owner truncated (SIGBUS -> a result code).
// Thin by design: names, sizes and error codes are validated in native/shm/index.ts.
#include <napi.h>
#include "sigbus_guard.h"
#include <atomic>
#include <cerrno>
#include <csetjmp>
#include <csignal>
#include <cstring>
#include <fcntl.h>
#include <mutex>
#include <string>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

namespace {

Napi::Value ErrnoError(Napi::Env env, const char* what, int err) {
  Napi::Error e = Napi::Error::New(env, std::string(what) + ": " + strerror(err));
  e.Set("errno", Napi::Number::New(env, -err));
  e.Set("syscall", Napi::String::New(env, what));
  e.ThrowAsJavaScriptException();
  return env.Undefined();
}

void Unmap(Napi::Env, void* data, size_t* len) {
  munmap(data, *len);
  delete len;
}

Napi::Value MapFd(Napi::Env env, int fd, size_t size) {
  void* p = size ? mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) : nullptr;
  int err = errno;
  close(fd);
  if (size && p == MAP_FAILED) return ErrnoError(env, "mmap", err);
  if (!size) return Napi::ArrayBuffer::New(env, 0);
  return Napi::ArrayBuffer::New(env, p, size, Unmap, new size_t(size));
}

// ---- Guarded copies: native/include/sigbus_guard.h (fractos::guardedMove, fractos::inRange)

// copyGuarded(dst: Uint8Array, src: Uint8Array) -> number: copies all of src to the start of
// dst (dst.length >= src.length; overlap allowed) and answers 0, or after a SIGBUS: 1 (the
// fault was in src), 2 (in dst), 3 (elsewhere). One call per copy, whatever its size.
Napi::Value CopyGuarded(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  napi_typedarray_type dt = napi_int8_array, st = napi_int8_array;
  size_t dn = 0, n = 0;
  void* dp = nullptr;
  void* sp = nullptr;
  if (info.Length() < 2 ||
      napi_get_typedarray_info(env, info[0], &dt, &dn, &dp, nullptr, nullptr) != napi_ok ||
      napi_get_typedarray_info(env, info[1], &st, &n, &sp, nullptr, nullptr) != napi_ok ||
      dt != napi_uint8_array || st != napi_uint8_array) {
    Napi::TypeError::New(env, "copyGuarded(dst: Uint8Array, src: Uint8Array)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (n > dn) {
    Napi::RangeError::New(env, "copyGuarded: src longer than dst").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (n == 0) return Napi::Number::New(env, 0);
  auto* d = static_cast<uint8_t*>(dp);
  auto* s = static_cast<const uint8_t*>(sp);
  void* fault = fractos::guardedMove(d, s, n);
  int r = fault == nullptr ? 0 : fractos::inRange(fault, s, n) ? 1 : fractos::inRange(fault, d, n) ? 2 : 3;
  return Napi::Number::New(env, r);
}

// create(name: string, size: number) -> ArrayBuffer; fails with EEXIST if the name exists.
Napi::Value Create(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name = info[0].As<Napi::String>();
  size_t size = static_cast<size_t>(info[1].As<Napi::Number>().Int64Value());
  int fd = shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
  if (fd < 0) return ErrnoError(env, "shm_open", errno);
  if (ftruncate(fd, static_cast<off_t>(size)) != 0) {
    int err = errno;
    close(fd);
    shm_unlink(name.c_str());
    return ErrnoError(env, "ftruncate", err);
  }
  return MapFd(env, fd, size);
}

// open(name: string) -> ArrayBuffer over the whole existing region.
Napi::Value Open(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name = info[0].As<Napi::String>();
  int fd = shm_open(name.c_str(), O_RDWR, 0);
  if (fd < 0) return ErrnoError(env, "shm_open", errno);
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int err = errno;
    close(fd);
    return ErrnoError(env, "fstat", err);
  }
  return MapFd(env, fd, static_cast<size_t>(st.st_size));
}

// unlink(name: string) -> void; the mappings stay valid until released.
Napi::Value Unlink(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name = info[0].As<Napi::String>();
  if (shm_unlink(name.c_str()) != 0 && errno != ENOENT) return ErrnoError(env, "shm_unlink", errno);
  return env.Undefined();
}

// address(ab: ArrayBuffer) -> number: the mapping's address mod 2^53 (for alignment checks).
Napi::Value Address(const Napi::CallbackInfo& info) {
  auto ab = info[0].As<Napi::ArrayBuffer>();
  return Napi::Number::New(info.Env(), static_cast<double>(reinterpret_cast<uintptr_t>(ab.Data()) & ((1ULL << 53) - 1)));
}

// peerCred(fd: number) -> {pid, uid, gid}: the credentials the kernel recorded for the peer
// of a connected unix socket when it connected (getsockopt SO_PEERCRED). On a socket that is
// not a unix socket Linux answers pid 0.
Napi::Value PeerCred(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = info[0].As<Napi::Number>().Int32Value();
  struct ucred cred;
  socklen_t len = sizeof cred;
  std::memset(&cred, 0, sizeof cred);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return ErrnoError(env, "getsockopt(SO_PEERCRED)", errno);
  Napi::Object out = Napi::Object::New(env);
  out.Set("pid", Napi::Number::New(env, static_cast<double>(cred.pid)));
  out.Set("uid", Napi::Number::New(env, static_cast<double>(cred.uid)));
  out.Set("gid", Napi::Number::New(env, static_cast<double>(cred.gid)));
  return out;
}

// flock(fd: number, exclusive: boolean, wait: boolean): 0 or -errno (-EWOULDBLOCK when held
// elsewhere and !wait). An advisory whole-file lock tied to the open file description: it
// goes away when every fd of it is closed, the holder's death included (no stale lock).
Napi::Value Flock(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsNumber()) {
    Napi::TypeError::New(env, "flock(fd, exclusive, wait)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  int fd = info[0].As<Napi::Number>().Int32Value();
  int op = (info[1].ToBoolean() ? LOCK_EX : LOCK_SH) | (info[2].ToBoolean() ? 0 : LOCK_NB);
  int r;
  do r = ::flock(fd, op); while (r != 0 && errno == EINTR);
  return Napi::Number::New(env, r == 0 ? 0 : -errno);
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("create", Napi::Function::New(env, Create));
  exports.Set("open", Napi::Function::New(env, Open));
  exports.Set("unlink", Napi::Function::New(env, Unlink));
  exports.Set("address", Napi::Function::New(env, Address));
  exports.Set("peerCred", Napi::Function::New(env, PeerCred));
  exports.Set("flock", Napi::Function::New(env, Flock));
  exports.Set("copyGuarded", Napi::Function::New(env, CopyGuarded));
  return exports;
}

}  // namespace

NODE_API_MODULE(fractos_shm, Init)
