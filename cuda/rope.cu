// rope.cu — NEOX rotary embedding (pairs (i, i + n_rot/2)), in place, base per call (per layer).
#include "common.cuh"

// x: [n_tok, n_heads, head_dim]; positions: [n_tok] int32; rotates the first n_rot dims.
// theta_i = pos * base^(-2i/n_rot), i < n_rot/2.
// grid = (n_tok, n_heads), block = n_rot/2 (<= 1024).
// Napkin (decode, Q 4x256 + K 1x256): 5 KiB read+write, one sincos per pair — launch-bound;
// fuse into the QK-norm later if it shows up in a profile.
extern "C" __global__ void __launch_bounds__(1024)
rope_neox(float* x, const int* __restrict__ positions, int n_heads, int head_dim, int n_rot, float base) {
  const int t = blockIdx.x, h = blockIdx.y, i = threadIdx.x;
  const int half = n_rot / 2;
  if (i >= half) return;
  const float inv_freq = exp2f(-(2.0f * (float)i / (float)n_rot) * log2f(base));
  const float ang = (float)positions[t] * inv_freq;
  float s, c;
  sincosf(ang, &s, &c);
  float* xp = x + ((long long)t * n_heads + h) * head_dim;
  const float a = xp[i], b = xp[i + half];
  xp[i] = a * c - b * s;
  xp[i + half] = a * s + b * c;
}
