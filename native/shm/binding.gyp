{
  # Shared Memory regions (sealed memfds) as ArrayBuffers; SO_PEERCRED, flock, guarded copies. Shared flags: ../common.gypi. No C++ exceptions.
  "includes": ["../common.gypi"],
  "targets": [
    {
      "target_name": "fractos_shm",
      "sources": ["shm.cc"],
      "defines": ["NAPI_DISABLE_CPP_EXCEPTIONS"]
    }
  ]
}
