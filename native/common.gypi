# Compiler flags shared by every native addon (native/*/binding.gyp: 'includes': ['../common.gypi']).
# One place for: C++20, hidden visibility (only the N-API entry point is exported), all the
# warnings of -Wall -Wextra (node's own common.gypi adds -Wno-unused-parameter: removed here,
# so an unused parameter is a warning too), a pinned N-API version, and -O2 (node's Release
# default is -O3; an addon that needs -O3 says so in its own cflags_cc, which come after).
# An addon keeps its own sources, libraries, exception mode and extra defines.
{
  'target_defaults': {
    'defines': ['NAPI_VERSION=8', 'NODE_ADDON_API_DISABLE_DEPRECATED'],
    # native/include: headers shared by addons (sigbus_guard.h).
    'include_dirs': ["<!(node -p \"require('node-addon-api').include_dir\")", 'include'],
    'cflags': ['-fvisibility=hidden', '-Wall', '-Wextra'],
    'cflags!': ['-Wno-unused-parameter'],
    'cflags_cc': ['-std=c++20', '-fvisibility=hidden', '-Wall', '-Wextra', '-O2'],
    'cflags_cc!': ['-std=gnu++17', '-std=gnu++20', '-std=c++17', '-Wno-unused-parameter'],
  },
}
