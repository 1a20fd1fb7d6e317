{
  # io_uring addon (liburing). One target; shared flags as in STYLE.md (better-sqlite3 style).
  "targets": [
    {
      "target_name": "fractos_uring",
      "sources": ["src/uring.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17", "-std=c++17"],
      "cflags": ["-fvisibility=hidden", "-Wall", "-Wextra"],
      "cflags_cc": ["-std=c++20", "-fvisibility=hidden", "-fexceptions", "-Wall", "-Wextra"],
      "libraries": ["-luring"]
    }
  ]
}
