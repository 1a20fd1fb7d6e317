// The plug between a Process's channel and a native I/O loop (issue #8 item 6;
// docs/blockdev-backend.md "The native I/O loop"): a plain C ABI, so that any backend (the
// io_uring loop of native/uring/src/ioloop.cc today, an SPDK poller tomorrow) can take frames
// off the channel the queue addon owns (native/queue/src/sock.cc) without entering JS, and
// answer on the same channel.
//
// Two tables of function pointers, each with an ABI version and its own size:
// - `fractos_frame_hook`: provided by the I/O loop, handed to the channel owner as a napi
//   External (its data pointer is the struct; the loop keeps it alive until `detach` returned).
// - `fractos_chan_ops`: provided by the channel owner to the loop in `attach`.
//
// Threading: every call, both ways, happens on the JS thread of the environment that owns
// the channel (the channel's libuv loop); a loop that reaps completions elsewhere must come
// back to that thread before it calls `send`. The one exception is `send_any_thread`. No call may re-enter the other side's call
// that is running (`send` is never called from inside `on_frame`: answers are sent from
// `flush` or from the loop's own completion callback).
//
// Frames are whole, header validated by the channel's splitter (docs/protocol.md "Framing":
// u32 length in [16, maxFrameBytes], u16 op, u16 flags 0, u32 seq, u16 code, u16 0); the
// body is untrusted bytes from the Controller's channel. A frame that came with file
// descriptors is never offered to the hook.
// An include guard, not #pragma once: the sanitizer build compiles a copy of controller/
// that reaches this header by two paths (two files to #pragma once).
#ifndef FRACTOS_INCLUDE_FRAME_HOOK_H
#define FRACTOS_INCLUDE_FRAME_HOOK_H

#include <stdint.h>
#include <sys/uio.h>

#ifdef __cplusplus
extern "C" {
#endif

/** ABI version of both tables; a side refuses a table with another version. */
#define FRACTOS_FRAME_HOOK_ABI 1u
/** `magic` of fractos_frame_hook ("FHK1"): a napi External that is not a hook is refused. */
#define FRACTOS_FRAME_HOOK_MAGIC 0x314b4846u

/** `send` flag: nobody needs waking for these frames (delivery credits): published quietly. */
#define FRACTOS_SEND_QUIET 1u

/** The channel, as seen by the loop. */
struct fractos_chan_ops {
  uint32_t abi;   /* FRACTOS_FRAME_HOOK_ABI */
  uint32_t size;  /* sizeof(struct fractos_chan_ops) */
  void* chan;     /* first argument of every call */
  /**
   * Send whole frames to the Controller, after every frame sent before (by JS or the loop).
   * `iov` holds the bytes of one or more whole frames back to back. Returns 0, or -EPIPE
   * when the channel is closed or closing (the frames are dropped). The channel copies or
   * writes the bytes before returning: the caller may reuse its buffers at once. `flags`:
   * 0, or FRACTOS_SEND_QUIET for frames nobody waits for (DELIVER_ACK alone): on a queue
   * pair they are read with the Controller's next woken batch (docs/queues.md).
   */
  int (*send)(void* chan, const struct iovec* iov, int iovcnt, uint32_t flags);
  /**
   * Optional (absent when `size` does not cover it, or NULL): `send` from ANY thread, for a
   * loop whose work arrives on threads of its own (the FUSE mount's native reads,
   * native/fuse/fuse.cc), so that it need not wake the channel's thread to send. Only frames
   * that go out at once are taken: on a shared-memory queue pair with nothing waiting before
   * them, that fit the ring now, at most one ring entry in all. Returns 0 (published; the
   * Controller woken as by `send`) or -EAGAIN (not now, nothing sent: a socket channel,
   * output waiting, the ring full or broken, the channel closing: use `send` from the
   * channel's thread, which reports those). Never calls the hook.
   */
  int (*send_any_thread)(void* chan, const struct iovec* iov, int iovcnt, uint32_t flags);
  /**
   * Spin up to `ns` (at most 1 ms) until `ready(arg)` returns non-zero, within the host's
   * spinner budget (docs/queues.md "Spinner budget": a slot is held while spinning; with
   * none free the caller yields between checks). Returns 1 when ready, 0 when not in time.
   * For a loop with work in flight (I/O submitted) before it goes back to sleep. Present when
   * `size` covers it (a channel of an older build has no spin: the loop just sleeps).
   */
  int (*spin)(void* chan, int (*ready)(void* arg), void* arg, uint64_t ns);
};

/** The loop, as seen by the channel. */
struct fractos_frame_hook {
  uint32_t magic;  /* FRACTOS_FRAME_HOOK_MAGIC */
  uint32_t abi;    /* FRACTOS_FRAME_HOOK_ABI */
  uint32_t size;   /* sizeof(struct fractos_frame_hook) */
  uint32_t reserved;
  void* ctx;  /* first argument of every call */
  /**
   * The channel the loop answers on, from now on. `ops` stays valid until `detach`. A hook
   * is attached to one channel at a time: a second attach (another channel) returns -EBUSY
   * and the channel owner does not use the hook. 0 or -errno.
   */
  int (*attach)(void* ctx, const struct fractos_chan_ops* ops);
  /**
   * The channel is gone (closed, failed) or the hook was replaced: `ops` must not be used
   * any more. Work in flight completes without answering (the Controller revoked the caps).
   */
  void (*detach)(void* ctx);
  /**
   * One whole frame off the channel, before JS sees it. Returns 1 when the loop took it
   * (JS never sees it; the loop answers it and returns its delivery credit), 0 to pass it to
   * JS unchanged. Must not call `send`. The bytes are valid only during the call.
   */
  int (*on_frame)(void* ctx, const uint8_t* frame, uint32_t len);
  /**
   * The end of a batch of frames offered to `on_frame` (one drain of the ring or one read
   * of the socket): submit what was prepared (one io_uring_enter per batch), send the
   * delivery credits and anything else due. May call `send`.
   */
  void (*flush)(void* ctx);
};

#ifdef __cplusplus
}
#endif

#endif  // FRACTOS_INCLUDE_FRAME_HOOK_H
