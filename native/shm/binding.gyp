{
  "targets": [
    {
      "target_name": "fractos_shm",
      "sources": ["shm.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS"],
      "cflags_cc": ["-std=c++20", "-fvisibility=hidden", "-O2"],
      "cflags_cc!": ["-fno-exceptions"],
      "libraries": ["-lrt"]
    }
  ]
}
