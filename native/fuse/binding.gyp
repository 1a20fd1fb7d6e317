{
  # libfuse3's low-level API for `fractos mount` (fs-mount/). Shared flags: ../common.gypi.
  # No C++ exceptions. Needs libfuse3-dev (pkg-config fuse3); without it the build fails and
  # the mount command and tests report ENODEV (the addon is optional in native/build.mjs).
  "includes": ["../common.gypi"],
  "targets": [
    {
      "target_name": "fractos_fuse",
      "sources": ["fuse.cc"],
      "defines": ["NAPI_DISABLE_CPP_EXCEPTIONS", "FUSE_USE_VERSION=314"],
      "cflags_cc": ["<!@(pkg-config --cflags fuse3)"],
      "libraries": ["<!@(pkg-config --libs fuse3)"]
    }
  ]
}
