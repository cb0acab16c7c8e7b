// act.cu — GeGLU: out = gelu_tanh(gate) * up.
#include "common.cuh"

// gelu_tanh(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
// gate, up, out: n floats (out may alias gate or up). grid-stride; block 256.
// Napkin (decode, ffn 2048): 24 KiB moved, ~20 FLOP/elem — launch-bound alone; meant to be
// fused into the down matvec's input later.
extern "C" __global__ void __launch_bounds__(1024)
geglu(const float* gate, const float* up, float* out, int n) {
  const float k0 = 0.7978845608028654f, k1 = 0.044715f;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    const float g = gate[i];
    const float t = tanhf(k0 * (g + k1 * g * g * g));
    out[i] = 0.5f * g * (1.0f + t) * up[i];
  }
}
