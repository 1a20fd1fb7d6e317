# fractos_gpu: one addon, two backends (cpu, cuda). libcuda is NOT linked: it is dlopen'ed at
# run time; cuda.h (types, versioned symbol names) is used when the toolkit is found
# (scripts/cuda-config.mjs: $CUDA_HOME, $CUDA_PATH, nvcc on PATH, /usr/local/cuda).
# The action compiles kernels/lbp.cu to build/Release/lbp.ptx (empty when nvcc is absent).
{
  'targets': [
    {
      'target_name': 'fractos_gpu',
      'sources': ['src/addon.cc', 'src/backend.cc', 'src/cpu_backend.cc', 'src/cuda_backend.cc', 'src/gpu_error.cc'],
      'include_dirs': [
        "<!(node -p \"require('node-addon-api').include_dir\")",
        '<!@(node scripts/cuda-config.mjs include)',
      ],
      'defines': ['NAPI_VERSION=8', 'NAPI_CPP_EXCEPTIONS', '<!@(node scripts/cuda-config.mjs defines)'],
      'cflags!': ['-fno-exceptions'],
      'cflags_cc!': ['-fno-exceptions', '-std=gnu++17', '-std=gnu++20'],
      'cflags_cc': ['-std=c++20', '-fvisibility=hidden', '-fexceptions', '-O3', '-ffp-contract=off', '-Wall', '-Wextra', '-Wno-unused-parameter', '-Wno-restrict'],
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
