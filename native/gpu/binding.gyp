# fractos_gpu: one addon, two backends (cpu, cuda). libcuda is NOT linked: it is dlopen'ed at
# run time; cuda.h (types, versioned symbol names) is used when the toolkit is found
# (scripts/cuda-config.mjs: $CUDA_HOME, $CUDA_PATH, nvcc on PATH, /usr/local/cuda).
# The action compiles kernels/lbp.cu to build/Release/lbp.ptx (empty when nvcc is absent).
# Shared flags (C++20, hidden visibility, -Wall -Wextra, NAPI_VERSION, -O2): ../common.gypi;
# this addon adds -O3 (its cpu backend is the LBP kernel) and -ffp-contract=off (results
# bit-identical to facever-app/lbp.ts).
{
  'includes': ['../common.gypi'],
  'targets': [
    {
      'target_name': 'fractos_gpu',
      'sources': ['src/addon.cc', 'src/backend.cc', 'src/cpu_backend.cc', 'src/cuda_backend.cc', 'src/gpu_error.cc'],
      'include_dirs': ['<!@(node scripts/cuda-config.mjs include)'],
      'defines': ['NAPI_CPP_EXCEPTIONS', '<!@(node scripts/cuda-config.mjs defines)'],
      'cflags!': ['-fno-exceptions'],
      'cflags_cc!': ['-fno-exceptions'],
      'cflags_cc': ['-fexceptions', '-O3', '-ffp-contract=off'],
      'libraries': ['-ldl', '-pthread'],
      'actions': [
        {
          'action_name': 'lbp_ptx',
          'inputs': ['kernels/lbp.cu', 'kernels/lbp_params.h', 'scripts/build-ptx.mjs'],
          'outputs': ['<(PRODUCT_DIR)/lbp.ptx'],
          'action': ['node', 'scripts/build-ptx.mjs', '<(PRODUCT_DIR)/lbp.ptx'],
        },
      ],
    },
  ],
}
