// fractos_shm: shared Memory regions as sealed memfds (native/include/memfd_region.h) mapped
// as ArrayBuffers. The owner Process creates a region and passes its fd to its Controller with
// the region's first MEMORY_CREATE (SCM_RIGHTS), so the Controller reads and writes registered
// Memory without waking the owner; an adaptor given the fd (MEMORY_MAP) maps it the same way.
// Also the kernel's credentials of a unix-socket peer (SO_PEERCRED): the Controller takes a
// Process's pid from the kernel, never from its HELLO; flock(2), for the Controller's state-dir
// lock and the blockdev's device claims; and copyGuarded: a memmove that survives a mapping
// whose file shrank under it (SIGBUS -> a result code; with sealed regions a second line only).
// Thin by design: sizes, fds and error codes are validated in native/shm/index.ts.
#include <napi.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <cstring>
#include <string>

#include "memfd_region.h"
#include "sigbus_guard.h"

namespace {

Napi::Value ErrnoError(Napi::Env env, const char* what, int err) {
  Napi::Error e = Napi::Error::New(env, std::string(what) + ": " + strerror(err));
  e.Set("errno", Napi::Number::New(env, -err));
  e.Set("syscall", Napi::String::New(env, what));
  e.ThrowAsJavaScriptException();
  return env.Undefined();
}

// One mapping seen through one or more ArrayBuffers (windows): unmapped when the last goes.
struct Mapping {
  void* base;
  size_t len;
  int refs;
};

void Release(Napi::Env, void*, Mapping* m) {
  if (--m->refs == 0) {
    munmap(m->base, m->len);
    delete m;
  }
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

// memfdCreate(size: number, seals: number) -> fd: a memfd of `size` bytes (mode 0600,
// close-on-exec) with `seals` (F_SEAL_* bits) added; the caller owns the fd.
Napi::Value MemfdCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t size = uint64_t(info[0].As<Napi::Number>().Int64Value());
  int seals = info[1].As<Napi::Number>().Int32Value();
  int fd = fractos::region::create(size, seals);
  if (fd < 0) return ErrnoError(env, "memfd_create", -fd);
  return Napi::Number::New(env, fd);
}

// map(fd: number, size: number, writable: boolean) -> ArrayBuffer[]: bytes [0, size) of the
// file mapped once, MAP_SHARED | MAP_NORESERVE, PROT_READ (| PROT_WRITE), seen through windows
// (N-API makes no external ArrayBuffer over 4 GiB): one over everything when size <= 4 GiB,
// else one every 2 GiB, each 4 GiB long or to the end, so that any range of at most 2 GiB
// lies inside one of them. Unmapped when every window is collected. The fd stays open (the
// mapping keeps the file alive after it is closed).
Napi::Value Map(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = info[0].As<Napi::Number>().Int32Value();
  size_t size = size_t(info[1].As<Napi::Number>().Int64Value());
  bool writable = info[2].ToBoolean();
  Napi::Array out = Napi::Array::New(env);
  if (size == 0) {
    out.Set(uint32_t(0), Napi::ArrayBuffer::New(env, 0));
    return out;
  }
  void* p = mmap(nullptr, size, PROT_READ | (writable ? PROT_WRITE : 0), MAP_SHARED | MAP_NORESERVE, fd, 0);
  if (p == MAP_FAILED) return ErrnoError(env, "mmap", errno);
  constexpr size_t kWindow = size_t(1) << 32, kStep = size_t(1) << 31;
  auto* m = new Mapping{p, size, 1};  // the 1 is ours until every window is made
  uint32_t i = 0;
  for (size_t off = 0; off < size; off += kStep) {
    size_t len = std::min(kWindow, size - off);
    m->refs++;
    napi_value ab;
    if (napi_create_external_arraybuffer(env, static_cast<uint8_t*>(p) + off, len,
                                         [](napi_env e, void* d, void* h) { Release(Napi::Env(e), d, static_cast<Mapping*>(h)); },
                                         m, &ab) != napi_ok) {
      // Node may have run the finalizer already (it does when V8 refuses the buffer): the
      // window's ref is not taken back here (at worst the mapping stays), only ours.
      Release(env, nullptr, m);
      Napi::Error::New(env, "napi_create_external_arraybuffer failed").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    out.Set(i++, Napi::Value(env, ab));
    if (len == size - off) break;
  }
  Release(env, nullptr, m);
  return out;
}

// seals(fd: number) -> the F_SEAL_* bits of the file (F_GET_SEALS), or -errno (-EINVAL: a
// file that does not support seals).
Napi::Value Seals(const Napi::CallbackInfo& info) {
  int fd = info[0].As<Napi::Number>().Int32Value();
  int s = fcntl(fd, F_GET_SEALS);
  return Napi::Number::New(info.Env(), s < 0 ? -errno : s);
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
  exports.Set("memfdCreate", Napi::Function::New(env, MemfdCreate));
  exports.Set("map", Napi::Function::New(env, Map));
  exports.Set("seals", Napi::Function::New(env, Seals));
  exports.Set("address", Napi::Function::New(env, Address));
  exports.Set("peerCred", Napi::Function::New(env, PeerCred));
  exports.Set("flock", Napi::Function::New(env, Flock));
  exports.Set("copyGuarded", Napi::Function::New(env, CopyGuarded));
  return exports;
}

}  // namespace

NODE_API_MODULE(fractos_shm, Init)
