# fractos_queue: shared-memory queue pairs (docs/queues.md). The library is header-only
# (src/ring.h, wake.h, memfd.h) and shared with the C++ Controller; this file builds
#   fractos_queue.node  the client addon (native/queue/index.ts)
#   pingpong            the raw round trip of the same mechanism (bench/queue-pingpong.ts)
#   ring_test           the library's own tests (test/queue-ring.test.ts also builds them
#                       with -fsanitize=address,undefined)
# Shared flags (C++20, -Wall -Wextra, -O2, NAPI_VERSION): ../common.gypi. No C++ exceptions.
{
  'includes': ['../common.gypi'],
  'targets': [
    {
      'target_name': 'fractos_queue',
      'sources': ['src/queue.cc', 'src/sock.cc'],
      'defines': ['NAPI_DISABLE_CPP_EXCEPTIONS'],
    },
    {
      'target_name': 'pingpong',
      'type': 'executable',
      'sources': ['src/pingpong.cc'],
    },
    {
      'target_name': 'ring_test',
      'type': 'executable',
      'sources': ['src/ring_test.cc'],
    },
  ],
}
