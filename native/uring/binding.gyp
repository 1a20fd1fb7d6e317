{
  # io_uring addon (liburing). One target; shared flags: ../common.gypi.
  "includes": ["../common.gypi"],
  "targets": [
    {
      "target_name": "fractos_uring",
      "sources": ["src/uring.cc"],
      "defines": ["NAPI_CPP_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-fexceptions"],
      "libraries": ["-luring"]
    }
  ]
}
