// float16 / bfloat16 <-> float32 on bits, callable from host and device code, giving exactly what
// tensor/dtype.h gives on the CPU (which converts with Eigen's portable code paths): round to
// nearest even; float16 NaN -> quiet NaN 0x7e00 with the sign, Inf -> Inf; bfloat16 NaN -> 0x7fc0
// or 0xffc0 by sign. cuda_thrust_test checks every float16 and bfloat16 pattern both ways and
// float32 patterns around every rounding boundary against tensor/dtype.h.
#ifndef NEXUSKV_CUDA_INTERNAL_DTYPE_BITS_H_
#define NEXUSKV_CUDA_INTERNAL_DTYPE_BITS_H_

#include <cstdint>

#include "cuda/internal/system.h"

namespace nexuskv::cuda::internal {

NEXUSKV_HD inline uint32_t FloatBits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof(u));
  return u;
}

NEXUSKV_HD inline float BitsFloat(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof(f));
  return f;
}

NEXUSKV_HD inline float HalfToFloat(uint16_t h) {
  const uint32_t shifted_exp = 0x7c00u << 13;
  uint32_t o = (static_cast<uint32_t>(h) & 0x7fffu) << 13;
  const uint32_t exp = shifted_exp & o;
  o += (127u - 15u) << 23;
  if (exp == shifted_exp) {
    o += (128u - 16u) << 23;  // Inf / NaN
  } else if (exp == 0) {
    o += 1u << 23;  // zero / subnormal: renormalize by a float subtraction (exact)
    o = FloatBits(BitsFloat(o) - BitsFloat(113u << 23));
  }
  o |= (static_cast<uint32_t>(h) & 0x8000u) << 16;
  return BitsFloat(o);
}

NEXUSKV_HD inline uint16_t FloatToHalf(float value) {
  const uint32_t f32_infinity = 255u << 23;
  const uint32_t f16_max = (127u + 16u) << 23;
  const uint32_t denorm_magic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
  uint32_t f = FloatBits(value);
  const uint32_t sign = f & 0x80000000u;
  f ^= sign;
  uint16_t out;
  if (f >= f16_max) {
    out = f > f32_infinity ? 0x7e00 : 0x7c00;
  } else if (f < (113u << 23)) {
    // Subnormal or zero: a float addition aligns the 10 mantissa bits, rounding to nearest even.
    f = FloatBits(BitsFloat(f) + BitsFloat(denorm_magic));
    out = static_cast<uint16_t>(f - denorm_magic);
  } else {
    const uint32_t mantissa_odd = (f >> 13) & 1u;
    f += 0xc8000fffu;
    f += mantissa_odd;
    out = static_cast<uint16_t>(f >> 13);
  }
  return static_cast<uint16_t>(out | (sign >> 16));
}

NEXUSKV_HD inline float BFloat16ToFloat(uint16_t b) {
  return BitsFloat(static_cast<uint32_t>(b) << 16);
}

NEXUSKV_HD inline uint16_t FloatToBFloat16(float value) {
  const uint32_t input = FloatBits(value);
  if (value != value) return (input & 0x80000000u) ? 0xffc0 : 0x7fc0;
  const uint32_t rounding_bias = 0x7fffu + ((input >> 16) & 1u);
  return static_cast<uint16_t>((input + rounding_bias) >> 16);
}

}  // namespace nexuskv::cuda::internal

#endif  // NEXUSKV_CUDA_INTERNAL_DTYPE_BITS_H_
