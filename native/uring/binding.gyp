{
  # io_uring addon (liburing): the Ring of uring-backend.ts and the blockdev's native I/O loop
  # (src/ioloop.cc, docs/blockdev-backend.md). One target; shared flags: ../common.gypi.
  "includes": ["../common.gypi"],
  "targets": [
    {
      "target_name": "fractos_uring",
      "sources": ["src/uring.cc", "src/ioloop.cc"],
      "defines": ["NAPI_CPP_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-fexceptions"],
      "libraries": ["-luring"]
    }
  ]
}
