// fractos_fuse: libfuse3's low-level API (fuse_lowlevel.h, libfuse 3.14) for `fractos mount`.
//
// One session per mount. A loop thread polls /dev/fuse (and a wake-up eventfd), receives each
// kernel request (fuse_session_receive_buf) and lets libfuse decode it
// (fuse_session_process_buf); every operation callback copies its arguments into an Ev and
// hands it to JS through a threadsafe function without waiting: the loop thread never blocks
// on JS, so any number of requests are in flight (the kernel's max_background bounds the
// asynchronous ones). JS answers later, from its own thread, with the reply functions
// (fuse_reply_* are safe from any thread: each is one writev on the fd).
//
// Requests are named to JS by a 53-bit id, never by pointer: a table id -> fuse_req_t (under a
// mutex) makes a reply to an unknown or already answered id a no-op (returns false), so a late
// answer after an interrupt or a stop cannot touch a freed request. forget/batch_forget are
// answered here (fuse_reply_none) and reported to JS as FORGET events. FUSE_INTERRUPT: every
// request registers an interrupt callback that reports INTERRUPT(id); JS decides.
//
// Stop (JS thread): wake and join the loop thread, answer every pending request ENOTCONN,
// fuse_session_unmount (lazy unmount as root, else fusermount3 -u -z), fuse_session_destroy.
// A mount that goes away underneath (fusermount3 -u, umount) ends the loop with ENODEV: an
// EXIT event tells JS, which then stops the session.
//
// Thin by design: names, options and error codes are validated in native/fuse/index.ts.
#include <napi.h>
#include <fuse_lowlevel.h>
#include <atomic>
#include <cerrno>
#include <cstdarg>
#include <cstring>
#include <mutex>
#include <poll.h>
#include <string>
#include <sys/eventfd.h>
#include <thread>
#include <unistd.h>
#include <unordered_map>
#include <vector>

namespace {

// Event kinds, shared with index.ts (FuseOp).
enum Op : uint32_t {
  OP_INIT = 1, OP_EXIT, OP_INTERRUPT, OP_FORGET,
  OP_LOOKUP = 10, OP_GETATTR, OP_SETATTR, OP_READLINK, OP_MKNOD, OP_MKDIR, OP_UNLINK, OP_RMDIR,
  OP_SYMLINK, OP_RENAME, OP_LINK, OP_OPEN, OP_READ, OP_WRITE, OP_FLUSH, OP_RELEASE, OP_FSYNC,
  OP_OPENDIR, OP_READDIR, OP_READDIRPLUS, OP_RELEASEDIR, OP_FSYNCDIR, OP_STATFS, OP_ACCESS,
  OP_CREATE, OP_FALLOCATE,
};

// Attribute array layout (Float64Array), shared with index.ts (ATTR_*).
constexpr int A_INO = 0, A_MODE = 1, A_NLINK = 2, A_UID = 3, A_GID = 4, A_RDEV = 5, A_SIZE = 6,
              A_BLOCKS = 7, A_ATIME_S = 8, A_ATIME_NS = 9, A_MTIME_S = 10, A_MTIME_NS = 11,
              A_CTIME_S = 12, A_CTIME_NS = 13, A_FIELDS = 14;

struct Session;

// One kernel request (or event) on its way to JS.
struct Ev {
  Session* s = nullptr;
  uint32_t op = 0;
  uint64_t id = 0;
  uint64_t ino = 0;
  double a = 0, b = 0, c = 0, d = 0;
  std::string name, name2;
  std::vector<char> data;  // write payload
  bool hasAttr = false;
  double attr[8] = {0};  // setattr: mode uid gid size atimeS atimeNs mtimeS mtimeNs
  uint32_t uid = 0, gid = 0, pid = 0;
};

struct Session {
  fuse_session* se = nullptr;
  std::thread loop;
  int wake = -1;
  std::atomic<bool> stopping{false};
  bool stopped = false;
  Napi::ThreadSafeFunction tsfn;
  std::mutex mu;
  std::unordered_map<uint64_t, fuse_req_t> reqs;
  uint64_t nextId = 1;
  // init options
  unsigned maxWrite = 1 << 20;
  unsigned maxBackground = 64;
  bool writeback = false;
  bool splice = false;
  std::string mountpoint;
  // Freed when both the JS External and the threadsafe function are finalized (JS thread).
  int refs = 2;
};

// libfuse's log lines of the current mount call (fuse_session_new/mount print their reasons).
thread_local std::string* tl_log = nullptr;
void LogFunc(enum fuse_log_level, const char* fmt, va_list ap) {
  char line[512];
  vsnprintf(line, sizeof line, fmt, ap);
  if (tl_log) *tl_log += line;
  // Outside a mount call libfuse has nothing to say that JS does not get as an error.
}

void CallJs(Napi::Env env, Napi::Function fn, Ev* ev);

void Post(Session* s, Ev* ev) {
  ev->s = s;
  if (s->tsfn.NonBlockingCall(ev, CallJs) != napi_ok) delete ev;
}

Session* Of(fuse_req_t req) { return static_cast<Session*>(fuse_req_userdata(req)); }

void OnInterrupt(fuse_req_t req, void* data) {
  Ev* ev = new Ev();
  ev->op = OP_INTERRUPT;
  ev->id = reinterpret_cast<uintptr_t>(data);
  Post(Of(req), ev);
}

// A request event: registers `req` under a new id.
Ev* Begin(fuse_req_t req, uint32_t op, fuse_ino_t ino) {
  Session* s = Of(req);
  Ev* ev = new Ev();
  ev->op = op;
  ev->ino = ino;
  const fuse_ctx* ctx = fuse_req_ctx(req);
  ev->uid = ctx->uid;
  ev->gid = ctx->gid;
  ev->pid = ctx->pid;
  {
    std::lock_guard<std::mutex> g(s->mu);
    ev->id = s->nextId++;
    s->reqs.emplace(ev->id, req);
  }
  fuse_req_interrupt_func(req, OnInterrupt, reinterpret_cast<void*>(static_cast<uintptr_t>(ev->id)));
  return ev;
}

void Send(fuse_req_t req, Ev* ev) { Post(Of(req), ev); }

void LlInit(void* ud, fuse_conn_info* conn) {
  Session* s = static_cast<Session*>(ud);
  conn->max_write = s->maxWrite;
  conn->max_read = 0;
  conn->max_background = s->maxBackground;
  conn->congestion_threshold = s->maxBackground * 3 / 4;
  unsigned want = FUSE_CAP_ASYNC_READ | FUSE_CAP_ATOMIC_O_TRUNC | FUSE_CAP_ASYNC_DIO |
                  FUSE_CAP_PARALLEL_DIROPS | FUSE_CAP_HANDLE_KILLPRIV | FUSE_CAP_CACHE_SYMLINKS | FUSE_CAP_AUTO_INVAL_DATA;
  if (s->writeback) want |= FUSE_CAP_WRITEBACK_CACHE;
  if (s->splice) want |= FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE;
  conn->want |= want & conn->capable;
  if (!s->splice) conn->want &= ~(FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE);
  // readdirplus on every page (not the adaptive mode: ls reads every page before it stats an
  // entry, so only the first page would carry attributes): the FS's readdir answers the
  // entries' attributes in the same reply, so ls -l or find -ls need no lookup per entry.
  conn->want |= FUSE_CAP_READDIRPLUS & conn->capable;
  conn->want &= ~FUSE_CAP_READDIRPLUS_AUTO;
  // Without locks implemented here the kernel keeps POSIX and flock locks local to this mount.
  conn->want &= ~(FUSE_CAP_POSIX_LOCKS | FUSE_CAP_FLOCK_LOCKS);
  Ev* ev = new Ev();
  ev->op = OP_INIT;
  ev->a = conn->max_write;
  ev->b = conn->want;
  ev->c = conn->proto_minor;
  Post(s, ev);
}

void LlLookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  Ev* ev = Begin(req, OP_LOOKUP, parent);
  ev->name = name;
  Send(req, ev);
}

void Forget(Session* s, fuse_ino_t ino, uint64_t n) {
  Ev* ev = new Ev();
  ev->op = OP_FORGET;
  ev->ino = ino;
  ev->a = static_cast<double>(n);
  Post(s, ev);
}

void LlForget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
  Session* s = Of(req);
  fuse_reply_none(req);
  Forget(s, ino, nlookup);
}

void LlForgetMulti(fuse_req_t req, size_t count, fuse_forget_data* f) {
  Session* s = Of(req);
  fuse_reply_none(req);
  for (size_t i = 0; i < count; i++) Forget(s, f[i].ino, f[i].nlookup);
}

double Fh(fuse_file_info* fi) { return fi ? static_cast<double>(fi->fh) : 0; }

void LlGetattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Ev* ev = Begin(req, OP_GETATTR, ino);
  ev->a = Fh(fi);
  Send(req, ev);
}

void LlSetattr(fuse_req_t req, fuse_ino_t ino, struct stat* st, int toSet, fuse_file_info* fi) {
  Ev* ev = Begin(req, OP_SETATTR, ino);
  ev->a = toSet;
  ev->b = Fh(fi);
  ev->c = fi ? 1 : 0;
  ev->hasAttr = true;
  ev->attr[0] = st->st_mode;
  ev->attr[1] = st->st_uid;
  ev->attr[2] = st->st_gid;
  ev->attr[3] = static_cast<double>(st->st_size);
  ev->attr[4] = static_cast<double>(st->st_atim.tv_sec);
  ev->attr[5] = static_cast<double>(st->st_atim.tv_nsec);
  ev->attr[6] = static_cast<double>(st->st_mtim.tv_sec);
  ev->attr[7] = static_cast<double>(st->st_mtim.tv_nsec);
  Send(req, ev);
}

void LlReadlink(fuse_req_t req, fuse_ino_t ino) { Send(req, Begin(req, OP_READLINK, ino)); }

void LlMknod(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, dev_t rdev) {
  Ev* ev = Begin(req, OP_MKNOD, parent);
  ev->name = name;
  ev->a = mode;
  ev->b = static_cast<double>(rdev);
  Send(req, ev);
}

void LlMkdir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode) {
  Ev* ev = Begin(req, OP_MKDIR, parent);
  ev->name = name;
  ev->a = mode;
  Send(req, ev);
}

void LlUnlink(fuse_req_t req, fuse_ino_t parent, const char* name) {
  Ev* ev = Begin(req, OP_UNLINK, parent);
  ev->name = name;
  Send(req, ev);
}

void LlRmdir(fuse_req_t req, fuse_ino_t parent, const char* name) {
  Ev* ev = Begin(req, OP_RMDIR, parent);
  ev->name = name;
  Send(req, ev);
}

void LlSymlink(fuse_req_t req, const char* link, fuse_ino_t parent, const char* name) {
  Ev* ev = Begin(req, OP_SYMLINK, parent);
  ev->name = name;
  ev->name2 = link;
  Send(req, ev);
}

void LlRename(fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t newparent, const char* newname, unsigned flags) {
  Ev* ev = Begin(req, OP_RENAME, parent);
  ev->name = name;
  ev->a = static_cast<double>(newparent);
  ev->name2 = newname;
  ev->b = flags;
  Send(req, ev);
}

void LlLink(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char* newname) {
  Ev* ev = Begin(req, OP_LINK, ino);
  ev->a = static_cast<double>(newparent);
  ev->name = newname;
  Send(req, ev);
}

void LlOpen(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Ev* ev = Begin(req, OP_OPEN, ino);
  ev->a = fi->flags;
  Send(req, ev);
}

void LlRead(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
  Ev* ev = Begin(req, OP_READ, ino);
  ev->a = static_cast<double>(size);
  ev->b = static_cast<double>(off);
  ev->c = Fh(fi);
  Send(req, ev);
}

void LlWrite(fuse_req_t req, fuse_ino_t ino, const char* buf, size_t size, off_t off, fuse_file_info* fi) {
  Ev* ev = Begin(req, OP_WRITE, ino);
  ev->data.assign(buf, buf + size);  // buf is the session's receive buffer: valid only now
  ev->b = static_cast<double>(off);
  ev->c = Fh(fi);
  ev->d = fi->writepage ? 1 : 0;
  Send(req, ev);
}

void LlFlush(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Ev* ev = Begin(req, OP_FLUSH, ino);
  ev->a = Fh(fi);
  Send(req, ev);
}

void LlRelease(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Ev* ev = Begin(req, OP_RELEASE, ino);
  ev->a = Fh(fi);
  ev->b = fi->flags;
  Send(req, ev);
}

void LlFsync(fuse_req_t req, fuse_ino_t ino, int datasync, fuse_file_info* fi) {
  Ev* ev = Begin(req, OP_FSYNC, ino);
  ev->a = Fh(fi);
  ev->b = datasync;
  Send(req, ev);
}

void LlOpendir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Ev* ev = Begin(req, OP_OPENDIR, ino);
  ev->a = fi->flags;
  Send(req, ev);
}

void Readdir(fuse_req_t req, uint32_t op, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
  Ev* ev = Begin(req, op, ino);
  ev->a = static_cast<double>(size);
  ev->b = static_cast<double>(off);
  ev->c = Fh(fi);
  Send(req, ev);
}

void LlReaddir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) { Readdir(req, OP_READDIR, ino, size, off, fi); }
void LlReaddirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) { Readdir(req, OP_READDIRPLUS, ino, size, off, fi); }

void LlReleasedir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Ev* ev = Begin(req, OP_RELEASEDIR, ino);
  ev->a = Fh(fi);
  Send(req, ev);
}

void LlFsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, fuse_file_info* fi) {
  Ev* ev = Begin(req, OP_FSYNCDIR, ino);
  ev->a = Fh(fi);
  ev->b = datasync;
  Send(req, ev);
}

void LlStatfs(fuse_req_t req, fuse_ino_t ino) { Send(req, Begin(req, OP_STATFS, ino)); }

void LlAccess(fuse_req_t req, fuse_ino_t ino, int mask) {
  Ev* ev = Begin(req, OP_ACCESS, ino);
  ev->a = mask;
  Send(req, ev);
}

void LlCreate(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, fuse_file_info* fi) {
  Ev* ev = Begin(req, OP_CREATE, parent);
  ev->name = name;
  ev->a = mode;
  ev->b = fi->flags;
  Send(req, ev);
}

void LlFallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length, fuse_file_info* fi) {
  Ev* ev = Begin(req, OP_FALLOCATE, ino);
  ev->a = mode;
  ev->b = static_cast<double>(offset);
  ev->c = static_cast<double>(length);
  ev->d = Fh(fi);
  Send(req, ev);
}

const fuse_lowlevel_ops kOps = [] {
  fuse_lowlevel_ops o;
  memset(&o, 0, sizeof o);
  o.init = LlInit;
  o.lookup = LlLookup;
  o.forget = LlForget;
  o.forget_multi = LlForgetMulti;
  o.getattr = LlGetattr;
  o.setattr = LlSetattr;
  o.readlink = LlReadlink;
  o.mknod = LlMknod;
  o.mkdir = LlMkdir;
  o.unlink = LlUnlink;
  o.rmdir = LlRmdir;
  o.symlink = LlSymlink;
  o.rename = LlRename;
  o.link = LlLink;
  o.open = LlOpen;
  o.read = LlRead;
  o.write = LlWrite;
  o.flush = LlFlush;
  o.release = LlRelease;
  o.fsync = LlFsync;
  o.opendir = LlOpendir;
  o.readdir = LlReaddir;
  o.readdirplus = LlReaddirplus;
  o.releasedir = LlReleasedir;
  o.fsyncdir = LlFsyncdir;
  o.statfs = LlStatfs;
  o.access = LlAccess;
  o.create = LlCreate;
  o.fallocate = LlFallocate;
  return o;
}();

void Loop(Session* s) {
  fuse_buf buf;
  memset(&buf, 0, sizeof buf);
  int err = 0;
  pollfd fds[2] = {{fuse_session_fd(s->se), POLLIN, 0}, {s->wake, POLLIN, 0}};
  while (!s->stopping.load()) {
    int n = poll(fds, 2, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      err = errno;
      break;
    }
    if (fds[1].revents) break;
    if (fds[0].revents & (POLLERR | POLLHUP | POLLNVAL)) {
      err = ENODEV;
      break;
    }
    int r = fuse_session_receive_buf(s->se, &buf);
    if (r == -EINTR || r == -EAGAIN || r == -ENOENT) continue;  // ENOENT: the request was interrupted and gone
    if (r <= 0) {
      err = r < 0 ? -r : ENODEV;
      break;
    }
    fuse_session_process_buf(s->se, &buf);
  }
  free(buf.mem);
  if (!s->stopping.load()) {
    Ev* ev = new Ev();
    ev->op = OP_EXIT;
    ev->a = err;
    Post(s, ev);
  }
}

void CallJs(Napi::Env env, Napi::Function fn, Ev* ev) {
  if (env == nullptr || ev->s->stopped) {
    delete ev;
    return;
  }
  napi_value data;
  if (ev->op == OP_WRITE) {
    data = Napi::Buffer<char>::Copy(env, ev->data.data(), ev->data.size());
  } else if (ev->hasAttr) {
    Napi::Float64Array f = Napi::Float64Array::New(env, 8);
    for (int i = 0; i < 8; i++) f[i] = ev->attr[i];
    data = f;
  } else {
    data = env.Undefined();
  }
  napi_value args[] = {
      Napi::Number::New(env, ev->op), Napi::Number::New(env, static_cast<double>(ev->id)),
      Napi::Number::New(env, static_cast<double>(ev->ino)), Napi::Number::New(env, ev->a),
      Napi::Number::New(env, ev->b), Napi::Number::New(env, ev->c), Napi::Number::New(env, ev->d),
      Napi::String::New(env, ev->name), Napi::String::New(env, ev->name2), data,
      Napi::Number::New(env, ev->uid), Napi::Number::New(env, ev->gid), Napi::Number::New(env, ev->pid),
  };
  delete ev;
  fn.Call(13, args);
}

// ---- JS side ------------------------------------------------------------------------------

Session* SessionOf(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsExternal()) return nullptr;
  return info[0].As<Napi::External<Session>>().Data();
}

Napi::Value Fail(Napi::Env env, const std::string& msg, int err) {
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("errno", Napi::Number::New(env, -err));
  e.ThrowAsJavaScriptException();
  return env.Undefined();
}

void Unref(Session* s) {
  if (--s->refs == 0) delete s;
}
void Finalize(Napi::Env, void*, Session* s) { Unref(s); }
void StopSession(Session* s);
void FinalizeExternal(Napi::Env, Session* s) {
  StopSession(s);  // a session dropped by JS without stop: unmount, do not leave the thread running
  Unref(s);
}

// mount(mountpoint, options: string[] (fuse args), cfg: {maxWrite, maxBackground, writeback, splice}, onEvent)
Napi::Value Mount(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 4 || !info[0].IsString() || !info[1].IsArray() || !info[2].IsObject() || !info[3].IsFunction()) {
    Napi::TypeError::New(env, "mount(mountpoint, args, cfg, onEvent)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Session* s = new Session();
  s->mountpoint = info[0].As<Napi::String>().Utf8Value();
  Napi::Object cfg = info[2].As<Napi::Object>();
  s->maxWrite = cfg.Get("maxWrite").As<Napi::Number>().Uint32Value();
  s->maxBackground = cfg.Get("maxBackground").As<Napi::Number>().Uint32Value();
  s->writeback = cfg.Get("writeback").ToBoolean();
  s->splice = cfg.Get("splice").ToBoolean();
  Napi::Array arr = info[1].As<Napi::Array>();
  std::vector<std::string> strs{"fractos"};
  for (uint32_t i = 0; i < arr.Length(); i++) strs.push_back(arr.Get(i).ToString().Utf8Value());
  std::vector<char*> argv;
  for (auto& x : strs) argv.push_back(x.data());
  fuse_args args = FUSE_ARGS_INIT(static_cast<int>(argv.size()), argv.data());
  std::string log;
  tl_log = &log;
  s->se = fuse_session_new(&args, &kOps, sizeof kOps, s);
  int err = errno;
  if (!s->se) {
    tl_log = nullptr;
    delete s;
    return Fail(env, "fuse_session_new: " + (log.empty() ? std::string("bad options") : log), EINVAL);
  }
  if (fuse_session_mount(s->se, s->mountpoint.c_str()) != 0) {
    err = errno ? errno : EIO;
    tl_log = nullptr;
    fuse_session_destroy(s->se);
    delete s;
    return Fail(env, "fuse_session_mount: " + (log.empty() ? std::string(strerror(err)) : log), err);
  }
  tl_log = nullptr;
  s->wake = eventfd(0, EFD_CLOEXEC);
  s->tsfn = Napi::ThreadSafeFunction::New(env, info[3].As<Napi::Function>(), "fractos_fuse", 0, 1, s, Finalize, s);
  s->loop = std::thread(Loop, s);
  return Napi::External<Session>::New(env, s, FinalizeExternal);
}

void StopSession(Session* s) {
  if (s->stopped) return;
  s->stopping.store(true);
  uint64_t one = 1;
  if (write(s->wake, &one, sizeof one) < 0) {
    // an eventfd write fails only on overflow: the loop is woken anyway
  }
  s->loop.join();
  s->stopped = true;
  {
    std::lock_guard<std::mutex> g(s->mu);
    for (auto& [id, req] : s->reqs) fuse_reply_err(req, ENOTCONN);
    s->reqs.clear();
  }
  fuse_session_unmount(s->se);
  fuse_session_destroy(s->se);
  s->se = nullptr;
  close(s->wake);
  s->tsfn.Release();
}

// stop(session): see the module comment. Idempotent.
Napi::Value Stop(const Napi::CallbackInfo& info) {
  Session* s = SessionOf(info);
  if (!s) return Fail(info.Env(), "stop: not a session", EINVAL);
  StopSession(s);
  return info.Env().Undefined();
}

// Take request `id` out of the table (null: unknown, answered, or stopped).
fuse_req_t Take(Session* s, const Napi::Value& v) {
  if (!s || s->stopped || !v.IsNumber()) return nullptr;
  uint64_t id = static_cast<uint64_t>(v.As<Napi::Number>().Int64Value());
  std::lock_guard<std::mutex> g(s->mu);
  auto it = s->reqs.find(id);
  if (it == s->reqs.end()) return nullptr;
  fuse_req_t r = it->second;
  s->reqs.erase(it);
  return r;
}

double Num(const Napi::CallbackInfo& info, size_t i) { return info.Length() > i && info[i].IsNumber() ? info[i].As<Napi::Number>().DoubleValue() : 0; }

void FillStatRaw(const double* f, struct stat* st) {
  memset(st, 0, sizeof *st);
  st->st_ino = static_cast<ino_t>(f[A_INO]);
  st->st_mode = static_cast<mode_t>(f[A_MODE]);
  st->st_nlink = static_cast<nlink_t>(f[A_NLINK]);
  st->st_uid = static_cast<uid_t>(f[A_UID]);
  st->st_gid = static_cast<gid_t>(f[A_GID]);
  st->st_rdev = static_cast<dev_t>(f[A_RDEV]);
  st->st_size = static_cast<off_t>(f[A_SIZE]);
  st->st_blocks = static_cast<blkcnt_t>(f[A_BLOCKS]);
  st->st_blksize = 4096;
  st->st_atim.tv_sec = static_cast<time_t>(f[A_ATIME_S]);
  st->st_atim.tv_nsec = static_cast<long>(f[A_ATIME_NS]);
  st->st_mtim.tv_sec = static_cast<time_t>(f[A_MTIME_S]);
  st->st_mtim.tv_nsec = static_cast<long>(f[A_MTIME_NS]);
  st->st_ctim.tv_sec = static_cast<time_t>(f[A_CTIME_S]);
  st->st_ctim.tv_nsec = static_cast<long>(f[A_CTIME_NS]);
}

bool FillStat(const Napi::Value& v, struct stat* st) {
  memset(st, 0, sizeof *st);
  if (!v.IsTypedArray()) return false;
  Napi::TypedArray ta = v.As<Napi::TypedArray>();
  if (ta.TypedArrayType() != napi_float64_array || ta.ElementLength() < static_cast<size_t>(A_FIELDS)) return false;
  FillStatRaw(v.As<Napi::Float64Array>().Data(), st);
  return true;
}

bool FillEntry(const Napi::CallbackInfo& info, size_t at, fuse_entry_param* e) {
  memset(e, 0, sizeof *e);
  e->ino = static_cast<fuse_ino_t>(Num(info, at));
  e->generation = static_cast<uint64_t>(Num(info, at + 1));
  if (e->ino != 0 && !FillStat(info[at + 2], &e->attr)) return false;
  e->attr_timeout = Num(info, at + 3);
  e->entry_timeout = Num(info, at + 4);
  return true;
}

void FillOpen(fuse_file_info* fi, double fh, uint32_t flags) {
  memset(fi, 0, sizeof *fi);
  fi->fh = static_cast<uint64_t>(fh);
  fi->direct_io = (flags & 1) != 0;
  fi->keep_cache = (flags & 2) != 0;
  fi->cache_readdir = (flags & 4) != 0;
  fi->noflush = (flags & 8) != 0;
  fi->nonseekable = (flags & 16) != 0;
}

Napi::Value Answered(Napi::Env env, fuse_req_t r, int res) { return Napi::Boolean::New(env, r != nullptr && res == 0); }

// replyErr(session, id, errno): errno 0 answers success for ops without data (flush, release, ...).
Napi::Value ReplyErr(const Napi::CallbackInfo& info) {
  fuse_req_t r = Take(SessionOf(info), info[1]);
  return Answered(info.Env(), r, r ? fuse_reply_err(r, static_cast<int>(Num(info, 2))) : 0);
}

// replyEntry(session, id, ino, generation, attr, attrTimeout, entryTimeout): ino 0 = negative entry.
Napi::Value ReplyEntry(const Napi::CallbackInfo& info) {
  fuse_entry_param e;
  if (!FillEntry(info, 2, &e)) return Fail(info.Env(), "replyEntry: attr must be a Float64Array(14)", EINVAL);
  fuse_req_t r = Take(SessionOf(info), info[1]);
  return Answered(info.Env(), r, r ? fuse_reply_entry(r, &e) : 0);
}

// replyCreate(session, id, ino, generation, attr, attrTimeout, entryTimeout, fh, openFlags)
Napi::Value ReplyCreate(const Napi::CallbackInfo& info) {
  fuse_entry_param e;
  if (!FillEntry(info, 2, &e) || e.ino == 0) return Fail(info.Env(), "replyCreate: bad entry", EINVAL);
  fuse_file_info fi;
  FillOpen(&fi, Num(info, 7), static_cast<uint32_t>(Num(info, 8)));
  fuse_req_t r = Take(SessionOf(info), info[1]);
  return Answered(info.Env(), r, r ? fuse_reply_create(r, &e, &fi) : 0);
}

// replyAttr(session, id, attr, timeout)
Napi::Value ReplyAttr(const Napi::CallbackInfo& info) {
  struct stat st;
  if (!FillStat(info[2], &st)) return Fail(info.Env(), "replyAttr: attr must be a Float64Array(14)", EINVAL);
  fuse_req_t r = Take(SessionOf(info), info[1]);
  return Answered(info.Env(), r, r ? fuse_reply_attr(r, &st, Num(info, 3)) : 0);
}

// replyReadlink(session, id, target)
Napi::Value ReplyReadlink(const Napi::CallbackInfo& info) {
  std::string t = info[2].ToString().Utf8Value();
  fuse_req_t r = Take(SessionOf(info), info[1]);
  return Answered(info.Env(), r, r ? fuse_reply_readlink(r, t.c_str()) : 0);
}

// replyOpen(session, id, fh, openFlags: 1 direct_io, 2 keep_cache, 4 cache_readdir, 8 noflush, 16 nonseekable)
Napi::Value ReplyOpen(const Napi::CallbackInfo& info) {
  fuse_file_info fi;
  FillOpen(&fi, Num(info, 2), static_cast<uint32_t>(Num(info, 3)));
  fuse_req_t r = Take(SessionOf(info), info[1]);
  return Answered(info.Env(), r, r ? fuse_reply_open(r, &fi) : 0);
}

// replyWrite(session, id, count)
Napi::Value ReplyWrite(const Napi::CallbackInfo& info) {
  fuse_req_t r = Take(SessionOf(info), info[1]);
  return Answered(info.Env(), r, r ? fuse_reply_write(r, static_cast<size_t>(Num(info, 2))) : 0);
}

// replyBuf(session, id, bytes: Uint8Array | undefined): the bytes are copied to the kernel now.
Napi::Value ReplyBuf(const Napi::CallbackInfo& info) {
  const char* p = nullptr;
  size_t n = 0;
  if (info.Length() > 2 && info[2].IsTypedArray()) {
    Napi::TypedArray ta = info[2].As<Napi::TypedArray>();
    p = static_cast<const char*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
    n = ta.ByteLength();
  }
  fuse_req_t r = Take(SessionOf(info), info[1]);
  return Answered(info.Env(), r, r ? fuse_reply_buf(r, p, n) : 0);
}

// replyStatfs(session, id, Float64Array[bsize, frsize, blocks, bfree, bavail, files, ffree, favail, namemax])
Napi::Value ReplyStatfs(const Napi::CallbackInfo& info) {
  if (!info[2].IsTypedArray()) return Fail(info.Env(), "replyStatfs: Float64Array(9)", EINVAL);
  Napi::Float64Array f = info[2].As<Napi::Float64Array>();
  if (f.ElementLength() < 9) return Fail(info.Env(), "replyStatfs: Float64Array(9)", EINVAL);
  struct statvfs sv;
  memset(&sv, 0, sizeof sv);
  sv.f_bsize = static_cast<unsigned long>(f[0]);
  sv.f_frsize = static_cast<unsigned long>(f[1]);
  sv.f_blocks = static_cast<fsblkcnt_t>(f[2]);
  sv.f_bfree = static_cast<fsblkcnt_t>(f[3]);
  sv.f_bavail = static_cast<fsblkcnt_t>(f[4]);
  sv.f_files = static_cast<fsfilcnt_t>(f[5]);
  sv.f_ffree = static_cast<fsfilcnt_t>(f[6]);
  sv.f_favail = static_cast<fsfilcnt_t>(f[7]);
  sv.f_namemax = static_cast<unsigned long>(f[8]);
  fuse_req_t r = Take(SessionOf(info), info[1]);
  return Answered(info.Env(), r, r ? fuse_reply_statfs(r, &sv) : 0);
}

// replyDir(session, id, size, plus, names: string[], attrs: Float64Array(15 per name: attr + next
// offset), attrTimeout, entryTimeout) -> entries packed (those that fit in `size` bytes; the
// kernel asks again from the last one's next offset). readdir uses only ino and mode of attr.
Napi::Value ReplyDir(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Session* s = SessionOf(info);
  size_t size = static_cast<size_t>(Num(info, 2));
  bool plus = info[3].ToBoolean();
  if (!info[4].IsArray() || !info[5].IsTypedArray()) return Fail(env, "replyDir: names, attrs", EINVAL);
  Napi::Array names = info[4].As<Napi::Array>();
  Napi::Float64Array f = info[5].As<Napi::Float64Array>();
  uint32_t n = names.Length();
  if (f.ElementLength() < static_cast<size_t>(n) * (A_FIELDS + 1)) return Fail(env, "replyDir: attrs too short", EINVAL);
  fuse_req_t r = Take(s, info[1]);
  if (!r) return Napi::Number::New(env, -1);
  std::vector<char> buf(size);
  size_t used = 0;
  uint32_t i = 0;
  for (; i < n; i++) {
    std::string name = names.Get(i).ToString().Utf8Value();
    const double* a = f.Data() + static_cast<size_t>(i) * (A_FIELDS + 1);
    off_t next = static_cast<off_t>(a[A_FIELDS]);
    size_t need;
    if (plus) {
      fuse_entry_param e;
      memset(&e, 0, sizeof e);
      FillStatRaw(a, &e.attr);
      e.ino = static_cast<fuse_ino_t>(a[A_INO]);
      e.attr_timeout = Num(info, 6);
      e.entry_timeout = Num(info, 7);
      need = fuse_add_direntry_plus(r, buf.data() + used, size - used, name.c_str(), &e, next);
    } else {
      struct stat st;
      memset(&st, 0, sizeof st);
      st.st_ino = static_cast<ino_t>(a[A_INO]);
      st.st_mode = static_cast<mode_t>(a[A_MODE]);
      need = fuse_add_direntry(r, buf.data() + used, size - used, name.c_str(), &st, next);
    }
    if (need > size - used) break;
    used += need;
  }
  fuse_reply_buf(r, buf.data(), used);
  return Napi::Number::New(env, i);
}

// invalEntry(session, parent, name) / invalInode(session, ino, off, len): tell the kernel to drop
// a cached name or attributes/data (another client changed the FS). 0 or -errno (-ENOENT: not cached).
Napi::Value InvalEntry(const Napi::CallbackInfo& info) {
  Session* s = SessionOf(info);
  if (!s || s->stopped) return Napi::Number::New(info.Env(), -ENOTCONN);
  std::string name = info[2].ToString().Utf8Value();
  return Napi::Number::New(info.Env(), fuse_lowlevel_notify_inval_entry(s->se, static_cast<fuse_ino_t>(Num(info, 1)), name.c_str(), name.size()));
}

Napi::Value InvalInode(const Napi::CallbackInfo& info) {
  Session* s = SessionOf(info);
  if (!s || s->stopped) return Napi::Number::New(info.Env(), -ENOTCONN);
  return Napi::Number::New(info.Env(), fuse_lowlevel_notify_inval_inode(s->se, static_cast<fuse_ino_t>(Num(info, 1)), static_cast<off_t>(Num(info, 2)), static_cast<off_t>(Num(info, 3))));
}

// pending(session): requests received and not yet answered (for tests and stats).
Napi::Value Pending(const Napi::CallbackInfo& info) {
  Session* s = SessionOf(info);
  if (!s) return Napi::Number::New(info.Env(), 0);
  std::lock_guard<std::mutex> g(s->mu);
  return Napi::Number::New(info.Env(), static_cast<double>(s->reqs.size()));
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  fuse_set_log_func(LogFunc);
  exports.Set("mount", Napi::Function::New(env, Mount));
  exports.Set("stop", Napi::Function::New(env, Stop));
  exports.Set("replyErr", Napi::Function::New(env, ReplyErr));
  exports.Set("replyEntry", Napi::Function::New(env, ReplyEntry));
  exports.Set("replyCreate", Napi::Function::New(env, ReplyCreate));
  exports.Set("replyAttr", Napi::Function::New(env, ReplyAttr));
  exports.Set("replyReadlink", Napi::Function::New(env, ReplyReadlink));
  exports.Set("replyOpen", Napi::Function::New(env, ReplyOpen));
  exports.Set("replyWrite", Napi::Function::New(env, ReplyWrite));
  exports.Set("replyBuf", Napi::Function::New(env, ReplyBuf));
  exports.Set("replyStatfs", Napi::Function::New(env, ReplyStatfs));
  exports.Set("replyDir", Napi::Function::New(env, ReplyDir));
  exports.Set("invalEntry", Napi::Function::New(env, InvalEntry));
  exports.Set("invalInode", Napi::Function::New(env, InvalInode));
  exports.Set("pending", Napi::Function::New(env, Pending));
  return exports;
}

}  // namespace

NODE_API_MODULE(fractos_fuse, Init)
