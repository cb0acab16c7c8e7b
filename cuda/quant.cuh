// quant.cuh — GGML weight block layouts, dequantized 8 values at a time in registers.
//
// A "chunk" is 8 consecutive values of a row; a row of K values has K/8 chunks. Each helper
// takes the row's base address and a chunk index and writes the chunk's 8 floats.
//   Q8_0: 34 B / 32 values: f16 d; i8 qs[32]                          y = d * q
//   Q5_0: 22 B / 32 values: f16 d; u8 qh[4]; u8 qs[16]                y = d * (q5 - 16)
//         q5_j = (qs[j % 16] >> 4*(j >= 16)) & 15 | ((qh >> j) & 1) << 4
//   Q4_K: 144 B / 256 values: f16 d, dmin; u8 scales[12] (8 x 6-bit scale, min); u8 qs[128]
//         64-value group g: qs[32g..32g+32] low nibbles = sub-block 2g, high = 2g+1
//         y = d * sc * q - dmin * m
//   Q6_K: 210 B / 256 values: u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d
//   TQ3_1S (id 45): 16 B / 32 values: f16 d0 (values 0..15), f16 d1 (16..31); qs[12]: 4 groups
//         of 8 3-bit indices, index i of a group at bits 3i.. of its little-endian 24-bit word
//   TQ4_1S (id 46): 20 B / 32 values: f16 d0, d1; qs[16] nibbles (qs[j/2] >> 4*(j%2))
//         TQ values are c[idx] * d in the block's ROTATED domain: W_blk = signs * H(q) / sqrt(32),
//         so W_blk . x = q . H(signs * x) / sqrt(32): the matvec rotates x once (tq_rotate_x)
//         and never un-rotates a weight.
//   F16 / F32: plain.
// All multi-byte loads are 2-byte aligned u16 loads (block sizes 34/22/210 are only even).
#pragma once
#include "common.cuh"

#define TS_Q8_0 8
#define TS_Q5_0 6
#define TS_Q4_K 12
#define TS_Q6_K 14
#define TS_F16 1
#define TS_F32 0
#define TS_TQ3_1S 45
#define TS_TQ4_1S 46

__constant__ float TQ3_BOOK[8] = {-1.996684f, -1.291398f, -0.740341f, -0.247508f,
                                  0.230106f,  0.725222f,  1.277503f,  1.988943f};
__constant__ float TQ4_BOOK[16] = {-2.732590f, -2.069017f, -1.618046f, -1.256231f, -0.942340f, -0.656759f,
                                   -0.388048f, -0.128395f, 0.128395f,  0.388048f,  0.656759f,  0.942340f,
                                   1.256231f,  1.618046f,  2.069017f,  2.732590f};
// TQ block rotation signs "+-+-++-+--+-++-+--+-+--+-++-+--+" as a mask (bit j set = -1)
#define TQ_SIGN_MASK 0x696b4b4au
#define TQ_INV_SQRT32 0.17677669529663688f

__device__ __forceinline__ u32 ld_u32_a2(const u8* p) {  // 2-byte aligned 32-bit load
  return (u32)ld_u16(p) | ((u32)ld_u16(p + 2) << 16);
}

__device__ __forceinline__ void deq8_q8_0(const u8* row, int c, float* y) {
  const u8* b = row + (c >> 2) * 34;
  const float d = ld_h(b);
  const u8* q = b + 2 + (c & 3) * 8;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const u16 v = ld_u16(q + 2 * k);
    y[2 * k] = d * (float)(i8)(v & 0xff);
    y[2 * k + 1] = d * (float)(i8)(v >> 8);
  }
}

__device__ __forceinline__ void deq8_q5_0(const u8* row, int c, float* y) {
  const u8* b = row + (c >> 2) * 22;
  const float d = ld_h(b);
  const u32 qh = ld_u32_a2(b + 2);
  const int j0 = (c & 3) * 8;
  const u8* qs = b + 6 + (j0 & 15);
  const int sh = j0 >= 16 ? 4 : 0;
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    const int q = ((qs[k] >> sh) & 15) | (((qh >> (j0 + k)) & 1) << 4);
    y[k] = d * (float)(q - 16);
  }
}

__device__ __forceinline__ void q4k_scale_min(const u8* sc, int j, int* s, int* m) {
  if (j < 4) {
    *s = sc[j] & 63;
    *m = sc[j + 4] & 63;
  } else {
    *s = (sc[j + 4] & 0xF) | ((sc[j - 4] >> 6) << 4);
    *m = (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4);
  }
}

__device__ __forceinline__ void deq8_q4_k(const u8* row, int c, float* y) {
  const u8* b = row + (c >> 5) * 144;
  const int i = (c & 31) * 8;  // index within the super-block
  const int g = i >> 6, r = i & 63;
  const int sub = 2 * g + (r >= 32 ? 1 : 0);
  int s, m;
  q4k_scale_min(b + 4, sub, &s, &m);
  const float d = ld_h(b) * (float)s, mn = ld_h(b + 2) * (float)m;
  const u8* qs = b + 16 + 32 * g + (r & 31);
  const int sh = r >= 32 ? 4 : 0;
#pragma unroll
  for (int k = 0; k < 8; ++k) y[k] = d * (float)((qs[k] >> sh) & 15) - mn;
}

__device__ __forceinline__ void deq8_q6_k(const u8* row, int c, float* y) {
  const u8* b = row + (c >> 5) * 210;
  const int i = (c & 31) * 8;
  const int n = i >> 7, t = i & 127, qd = t >> 5, l = t & 31;
  const u8* ql = b + 64 * n + l + ((qd & 1) ? 32 : 0);
  const u8* qh = b + 128 + 32 * n + l;
  const float d = ld_h(b + 208) * (float)(i8)b[192 + 8 * n + (l >> 4) + 2 * qd];
  const int lsh = (qd >= 2) ? 4 : 0, hsh = 2 * qd;
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    const int q = ((ql[k] >> lsh) & 15) | (((qh[k] >> hsh) & 3) << 4);
    y[k] = d * (float)(q - 32);
  }
}

__device__ __forceinline__ void deq8_f16(const u8* row, int c, float* y) {
#pragma unroll
  for (int k = 0; k < 8; ++k) y[k] = h2f(ld_u16(row + c * 16 + 2 * k));
}

__device__ __forceinline__ void deq8_f32(const u8* row, int c, float* y) {
  const float* p = reinterpret_cast<const float*>(row) + c * 8;
#pragma unroll
  for (int k = 0; k < 8; ++k) y[k] = p[k];
}

// `book`: the TQ codebook, best a copy in shared memory (lanes index it divergently)
__device__ __forceinline__ void deq8_tq3_1s(const u8* row, int c, const float* book, float* y) {
  const u8* b = row + (c >> 2) * 16;
  const int grp = c & 3;
  const float d = ld_h(b + (grp >= 2 ? 2 : 0));
  const u8* q = b + 4 + 3 * grp;
  const u32 w = (u32)q[0] | ((u32)q[1] << 8) | ((u32)q[2] << 16);
#pragma unroll
  for (int k = 0; k < 8; ++k) y[k] = book[(w >> (3 * k)) & 7] * d;
}

__device__ __forceinline__ void deq8_tq4_1s(const u8* row, int c, const float* book, float* y) {
  const u8* b = row + (c >> 2) * 20;
  const int grp = c & 3;
  const float d = ld_h(b + (grp >= 2 ? 2 : 0));
  const u8* q = b + 4 + 4 * grp;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    y[2 * k] = book[q[k] & 15] * d;
    y[2 * k + 1] = book[q[k] >> 4] * d;
  }
}

// bytes of one row of K values
__device__ __forceinline__ long long row_bytes_w(int type, int K) {
  switch (type) {
    case TS_Q8_0: return (long long)(K / 32) * 34;
    case TS_Q5_0: return (long long)(K / 32) * 22;
    case TS_Q4_K: return (long long)(K / 256) * 144;
    case TS_Q6_K: return (long long)(K / 256) * 210;
    case TS_TQ3_1S: return (long long)(K / 32) * 16;
    case TS_TQ4_1S: return (long long)(K / 32) * 20;
    case TS_F16: return (long long)K * 2;
    default: return (long long)K * 4;
  }
}
