// fractos_controller: the N-API surface of the native Controller, used only by
// controller/controller.ts (the thin JS host: options, state-dir lock, epoch, unix path
// claims, logging). One `ControllerHost` object per Controller:
//
//   new ControllerHost(opts, log)   opts: { id, helloTimeoutMs, servedTimeoutMs,
//                                   peerWaitWarnMs, limits: {...}, secret: Buffer|null,
//                                   peers: [[id, text, unix, pathOrHost, port], ...] };
//                                   log(level 0|1|2, msg, fieldsJson) runs on the JS thread
//   listen(text, unix, pathOrHost, port) -> address as listened on; throws {code, errno}
//   start(epoch)                    makes the core, starts the loop thread, dials peers
//   stats() -> LinkStats[]          tableSizes() -> {core: json, handshaking}
//   objectCount() -> number         queuedDeliveryBytes(proc) -> [provider, invoker]
//   connectedPeers() -> number[]    close(): stops and joins the loop (idempotent)
//   opts.names(kind, req, nameBuf, origin, originEpoch, ownerProc, refController, refEpoch, refId)
//                                   when given: the external name store (host_names.h), kind
//                                   0 put / 1 get / 2 remove, refId a decimal string;
//                                   opts.namesTimeoutMs bounds each request (ETIMEDOUT)
//   nameDone(req, code, msg, origin, originEpoch, ownerProc, refController, refEpoch, refId,
//            revision, createRevision)  JS answers a put/get (code 0 ok, else a wire code)
//
// Each query runs on the loop thread (posted through its eventfd) and waits for it: no JS
// runs per frame. Log lines cross to JS through a thread-safe function (non-blocking, so
// the loop never waits for JS).
#include <napi.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "host_impl.h"
#include "host_names.h"

namespace {

using fractos::HostAddr;
using fractos::HostImpl;
using fractos::HostOptions;
using fractos::LinkStats;
using fractos::LogLevel;

struct NameItem {
  uint8_t kind;
  uint64_t req;
  std::string name;
  fractos::NameRecord r;
};

struct LogItem {
  LogLevel level;
  std::string msg;
  std::string fields;
};

const char* errnoCode(int e) {
  switch (e) {
    case EADDRINUSE: return "EADDRINUSE";
    case EADDRNOTAVAIL: return "EADDRNOTAVAIL";
    case EACCES: return "EACCES";
    case EEXIST: return "EEXIST";
    case ENOENT: return "ENOENT";
    default: return "EINVAL";
  }
}

uint32_t u32(const Napi::Object& o, const char* k, uint32_t dflt) {
  Napi::Value v = o.Get(k);
  return v.IsNumber() ? v.As<Napi::Number>().Uint32Value() : dflt;
}
uint64_t u64(const Napi::Object& o, const char* k, uint64_t dflt) {
  Napi::Value v = o.Get(k);
  if (!v.IsNumber()) return dflt;
  double d = v.As<Napi::Number>().DoubleValue();
  return d <= 0 ? 0 : uint64_t(d);
}

class ControllerHost : public Napi::ObjectWrap<ControllerHost> {
 public:
  static Napi::Object Init(Napi::Env env, Napi::Object exports) {
    Napi::Function f = DefineClass(env, "ControllerHost",
                                   {InstanceMethod("listen", &ControllerHost::Listen),
                                    InstanceMethod("start", &ControllerHost::Start),
                                    InstanceMethod("stats", &ControllerHost::Stats),
                                    InstanceMethod("tableSizes", &ControllerHost::TableSizes),
                                    InstanceMethod("objectCount", &ControllerHost::ObjectCount),
                                    InstanceMethod("queuedDeliveryBytes", &ControllerHost::QueuedDeliveryBytes),
                                    InstanceMethod("connectedPeers", &ControllerHost::ConnectedPeers),
                                    InstanceMethod("addPeer", &ControllerHost::AddPeer),
                                    InstanceMethod("failPeer", &ControllerHost::FailPeer),
                                    InstanceMethod("nameDone", &ControllerHost::NameDone),
                                    InstanceMethod("close", &ControllerHost::Close)});
    exports.Set("ControllerHost", f);
    return exports;
  }

  ControllerHost(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ControllerHost>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsObject() || !info[1].IsFunction()) {
      Napi::TypeError::New(env, "new ControllerHost(opts, log)").ThrowAsJavaScriptException();
      return;
    }
    Napi::Object o = info[0].As<Napi::Object>();
    HostOptions ho;
    ho.core.id = u32(o, "id", 0);
    ho.core.servedTimeoutMs = u32(o, "servedTimeoutMs", 5000);
    ho.helloTimeoutMs = u32(o, "helloTimeoutMs", 5000);
    // FRACTOS_QUEUE_SPIN_US: the Controller's spin on active request rings (docs/queues.md), 0 = never
    if (const char* e = getenv("FRACTOS_QUEUE_SPIN_US")) ho.queueSpinNs = strtoull(e, nullptr, 10) * 1000;
    // FRACTOS_POLL_SPIN_US: the longest spin after a poll-mode Process's activity (e.g. 100;
    // default 0: none);
    // FRACTOS_SPIN_SLOTS: slots of the host's spinner budget (default CPUs - 1; 0: no page)
    if (const char* e = getenv("FRACTOS_POLL_SPIN_US")) ho.pollSpinMaxNs = std::min<uint64_t>(strtoull(e, nullptr, 10), 1000) * 1000;
    if (const char* e = getenv("FRACTOS_SPIN_SLOTS")) ho.spinSlots = uint32_t(std::min<uint64_t>(strtoull(e, nullptr, 10), fractos::queue::BUDGET_MAX_SLOTS));
    ho.peerWaitWarnMs = u32(o, "peerWaitWarnMs", 10000);
    Napi::Value lv = o.Get("limits");
    if (lv.IsObject()) {
      Napi::Object l = lv.As<Napi::Object>();
      fractos::Limits& L = ho.core.limits;
      L.maxFrameBytes = u32(l, "maxFrameBytes", L.maxFrameBytes);
      L.maxImmBytes = u32(l, "maxImmBytes", L.maxImmBytes);
      L.maxCapSlots = u32(l, "maxCapSlots", L.maxCapSlots);
      L.maxCaps = u32(l, "maxCaps", L.maxCaps);
      L.maxOutstandingDeliveries = u32(l, "maxOutstandingDeliveries", L.maxOutstandingDeliveries);
      L.maxOutstandingDeliveryBytes = u64(l, "maxOutstandingDeliveryBytes", L.maxOutstandingDeliveryBytes);
      L.maxQueuedDeliveries = u32(l, "maxQueuedDeliveries", L.maxQueuedDeliveries);
      L.maxQueuedDeliveryBytes = u64(l, "maxQueuedDeliveryBytes", L.maxQueuedDeliveryBytes);
      L.maxQueuedBytesPerInvoker = u64(l, "maxQueuedBytesPerInvoker", L.maxQueuedBytesPerInvoker);
      L.maxOutboundBytes = u64(l, "maxOutboundBytes", L.maxOutboundBytes);
      L.queueRingBytes = u32(l, "queueRingBytes", L.queueRingBytes);
    }
    Napi::Value sv = o.Get("secret");
    if (sv.IsBuffer()) {
      auto b = sv.As<Napi::Buffer<uint8_t>>();
      ho.secret.assign(b.Data(), b.Data() + b.Length());
    }
    Napi::Value pv = o.Get("peers");
    if (pv.IsArray()) {
      Napi::Array a = pv.As<Napi::Array>();
      for (uint32_t i = 0; i < a.Length(); i++) {
        Napi::Array e = a.Get(i).As<Napi::Array>();
        HostAddr ad;
        ad.text = e.Get(1u).As<Napi::String>().Utf8Value();
        ad.unix = e.Get(2u).As<Napi::Boolean>().Value();
        (ad.unix ? ad.path : ad.host) = e.Get(3u).As<Napi::String>().Utf8Value();
        ad.port = uint16_t(e.Get(4u).As<Napi::Number>().Uint32Value());
        uint32_t pid = e.Get(0u).As<Napi::Number>().Uint32Value();
        ho.core.peerIds.push_back(pid);
        ho.peers.emplace_back(pid, std::move(ad));
      }
    }
    Napi::Value nv = o.Get("names");
    if (nv.IsFunction()) {
      namesTsfn_ = Napi::ThreadSafeFunction::New(env, nv.As<Napi::Function>(), "fractos controller names", 0, 1);
      namesLive_ = true;
      names_ = std::make_unique<fractos::JsNameStore>(u32(o, "namesTimeoutMs", 3000), [this](fractos::JsNameStore::Kind k, uint64_t req, const std::string& name, const fractos::NameRecord& r) {
        if (!namesLive_) return false;
        auto* item = new NameItem{uint8_t(k), req, name, r};
        napi_status s = namesTsfn_.NonBlockingCall(item, [](Napi::Env env, Napi::Function fn, NameItem* it) {
          if (env != nullptr && fn != nullptr) {
            fn.Call({Napi::Number::New(env, it->kind), Napi::Number::New(env, double(it->req)), Napi::Buffer<char>::Copy(env, it->name.data(), it->name.size()),
                     Napi::Number::New(env, it->r.origin), Napi::Number::New(env, it->r.originEpoch), Napi::Number::New(env, it->r.ownerProc),
                     Napi::Number::New(env, it->r.refController), Napi::Number::New(env, it->r.refEpoch),
                     Napi::String::New(env, std::to_string(it->r.refId))});
          }
          delete it;
        });
        if (s != napi_ok) delete item;
        return s == napi_ok;
      });
      ho.core.names = names_.get();
    }
    tsfn_ = Napi::ThreadSafeFunction::New(env, info[1].As<Napi::Function>(), "fractos controller log", 0, 1);
    live_ = true;
    host_ = std::make_unique<HostImpl>(std::move(ho), [this](LogLevel lv, std::string msg, std::string fields) {
      if (!live_) return;
      auto* item = new LogItem{lv, std::move(msg), std::move(fields)};
      napi_status s = tsfn_.NonBlockingCall(item, [](Napi::Env env, Napi::Function fn, LogItem* it) {
        if (env != nullptr && fn != nullptr) {
          fn.Call({Napi::Number::New(env, double(it->level)), Napi::String::New(env, it->msg),
                   Napi::String::New(env, it->fields)});
        }
        delete it;
      });
      if (s != napi_ok) delete item;
    });
    if (names_) names_->attach(host_.get());
    napi_add_env_cleanup_hook(env, CleanupHook, this);
  }

  ~ControllerHost() override {
    Shutdown();
    napi_remove_env_cleanup_hook(Env(), CleanupHook, this);
  }

 private:
  static void CleanupHook(void* arg) { static_cast<ControllerHost*>(arg)->Shutdown(); }

  void Shutdown() {
    if (host_) host_->stop();
    host_.reset();
    if (names_) names_->clear();  // the loop and the core are gone: nothing answers them
    if (namesLive_) {
      namesLive_ = false;
      namesTsfn_.Release();
    }
    if (live_) {
      live_ = false;
      tsfn_.Release();
    }
  }

  bool Check(Napi::Env env) {
    if (host_) return true;
    Napi::Error e = Napi::Error::New(env, "controller is closed");
    e.Set("code", Napi::String::New(env, "EDISCONNECTED"));
    e.ThrowAsJavaScriptException();
    return false;
  }

  Napi::Value Listen(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Check(env)) return env.Undefined();
    HostAddr a;
    a.text = info[0].As<Napi::String>().Utf8Value();
    a.unix = info[1].As<Napi::Boolean>().Value();
    (a.unix ? a.path : a.host) = info[2].As<Napi::String>().Utf8Value();
    a.port = uint16_t(info[3].As<Napi::Number>().Uint32Value());
    std::string bound, err;
    int r = host_->listen(a, &bound, &err);
    if (r != 0) {
      Napi::Error e = Napi::Error::New(env, err);
      e.Set("code", Napi::String::New(env, errnoCode(-r)));
      e.Set("errno", Napi::Number::New(env, r));
      e.ThrowAsJavaScriptException();
      return env.Undefined();
    }
    return Napi::String::New(env, bound);
  }

  Napi::Value Start(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Check(env)) return env.Undefined();
    std::string err;
    if (!host_->start(info[0].As<Napi::Number>().Uint32Value(), &err)) {
      Napi::Error::New(env, err).ThrowAsJavaScriptException();
    }
    return env.Undefined();
  }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Check(env)) return env.Undefined();
    std::vector<LinkStats> v;
    host_->call([&] { v = host_->linkStats(); });
    Napi::Array out = Napi::Array::New(env, v.size());
    for (size_t i = 0; i < v.size(); i++) {
      const LinkStats& s = v[i];
      Napi::Object o = Napi::Object::New(env);
      o.Set("kind", Napi::String::New(env, s.peer ? "peer" : "process"));
      o.Set("id", Napi::Number::New(env, s.id));
      o.Set("name", Napi::String::New(env, s.name));
      o.Set("framesIn", Napi::Number::New(env, double(s.framesIn)));
      o.Set("framesOut", Napi::Number::New(env, double(s.framesOut)));
      o.Set("bytesIn", Napi::Number::New(env, double(s.bytesIn)));
      o.Set("bytesOut", Napi::Number::New(env, double(s.bytesOut)));
      o.Set("backlogBytes", Napi::Number::New(env, double(s.backlogBytes)));
      o.Set("readPauses", Napi::Number::New(env, double(s.readPauses)));
      if (s.closed) o.Set("closed", Napi::Boolean::New(env, true));
      out.Set(uint32_t(i), o);
    }
    return out;
  }

  Napi::Value TableSizes(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Check(env)) return env.Undefined();
    std::string json;
    uint32_t hs = 0;
    host_->call([&] {
      json = host_->core() ? host_->core()->tableSizesJson() : "{}";
      hs = host_->handshaking();
    });
    Napi::Object o = Napi::Object::New(env);
    o.Set("core", Napi::String::New(env, json));
    o.Set("handshaking", Napi::Number::New(env, hs));
    return o;
  }

  Napi::Value ObjectCount(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Check(env)) return env.Undefined();
    uint64_t n = 0;
    host_->call([&] { n = host_->core() ? host_->core()->objectCount() : 0; });
    return Napi::Number::New(env, double(n));
  }

  Napi::Value QueuedDeliveryBytes(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Check(env)) return env.Undefined();
    uint32_t proc = info[0].As<Napi::Number>().Uint32Value();
    uint64_t p = 0, i = 0;
    host_->call([&] {
      if (host_->core()) host_->core()->queuedDeliveryBytes(proc, &p, &i);
    });
    Napi::Array out = Napi::Array::New(env, 2);
    out.Set(0u, Napi::Number::New(env, double(p)));
    out.Set(1u, Napi::Number::New(env, double(i)));
    return out;
  }

  Napi::Value ConnectedPeers(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Check(env)) return env.Undefined();
    std::vector<uint32_t> v;
    host_->call([&] {
      if (host_->core()) v = host_->core()->connectedPeers();
    });
    Napi::Array out = Napi::Array::New(env, v.size());
    for (size_t i = 0; i < v.size(); i++) out.Set(uint32_t(i), Napi::Number::New(env, v[i]));
    return out;
  }

  // addPeer(id, text, unix, hostOrPath, port, epoch): a member joins (controller/membership.ts)
  Napi::Value AddPeer(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Check(env)) return env.Undefined();
    uint32_t id = info[0].As<Napi::Number>().Uint32Value();
    HostAddr ad;
    ad.text = info[1].As<Napi::String>().Utf8Value();
    ad.unix = info[2].As<Napi::Boolean>().Value();
    (ad.unix ? ad.path : ad.host) = info[3].As<Napi::String>().Utf8Value();
    ad.port = uint16_t(info[4].As<Napi::Number>().Uint32Value());
    uint32_t epoch = info[5].As<Napi::Number>().Uint32Value();
    host_->call([&] { host_->addPeer(id, ad, epoch); });
    return env.Undefined();
  }

  // failPeer(id, epoch, why): a member's lease expired
  Napi::Value FailPeer(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Check(env)) return env.Undefined();
    uint32_t id = info[0].As<Napi::Number>().Uint32Value();
    uint32_t epoch = info[1].As<Napi::Number>().Uint32Value();
    std::string why = info[2].As<Napi::String>().Utf8Value();
    host_->call([&] { host_->failPeer(id, epoch, why); });
    return env.Undefined();
  }

  // nameDone(req, code, msg, origin, originEpoch, ownerProc, refController, refEpoch, refId, revision, createRevision)
  Napi::Value NameDone(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!host_ || !names_) return env.Undefined();  // closed meanwhile: dropped
    uint64_t req = uint64_t(info[0].As<Napi::Number>().DoubleValue());
    uint16_t code = uint16_t(info[1].As<Napi::Number>().Uint32Value());
    std::string msg = info[2].As<Napi::String>().Utf8Value();
    fractos::NameRecord r;
    r.origin = info[3].As<Napi::Number>().Uint32Value();
    r.originEpoch = info[4].As<Napi::Number>().Uint32Value();
    r.ownerProc = info[5].As<Napi::Number>().Uint32Value();
    r.refController = info[6].As<Napi::Number>().Uint32Value();
    r.refEpoch = info[7].As<Napi::Number>().Uint32Value();
    r.refId = std::strtoull(info[8].As<Napi::String>().Utf8Value().c_str(), nullptr, 10);
    r.revision = info[9].As<Napi::Number>().Int64Value();
    r.createRevision = info[10].As<Napi::Number>().Int64Value();
    host_->call([&] { names_->answer(req, code, msg, r); });
    return env.Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Shutdown();
    return info.Env().Undefined();
  }

  std::unique_ptr<fractos::JsNameStore> names_;  // outlives host_ (declared first, cleared after its stop)
  Napi::ThreadSafeFunction namesTsfn_;
  bool namesLive_ = false;
  std::unique_ptr<HostImpl> host_;
  Napi::ThreadSafeFunction tsfn_;
  bool live_ = false;
};

Napi::Object InitAll(Napi::Env env, Napi::Object exports) { return ControllerHost::Init(env, exports); }

}  // namespace

NODE_API_MODULE(fractos_controller, InitAll)
