{
  # The native Controller (controller/src/: the core and its host, host.h is the boundary).
  # Shared flags: ../native/common.gypi. No C++ exceptions. HMAC of the peer handshake: OpenSSL.
  # Sources: every src/*.cc (controller/sources.mjs leaves out the host's test core when the
  # real core.cc is there).
  "includes": ["../native/common.gypi"],
  "targets": [
    {
      "target_name": "fractos_controller",
      "sources": ["<!@(node sources.mjs)"],
      "defines": ["NAPI_DISABLE_CPP_EXCEPTIONS"],
      "libraries": ["-lcrypto"]
    }
  ]
}
