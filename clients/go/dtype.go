package nexuskv

import (
	"encoding/binary"
	"fmt"
	"math"

	pb "github.com/nexuskv/nexuskv/clients/go/nexuskvpb"
)

// Tensors travel as raw little-endian bytes in the session dtype (float32, float16, bfloat16), as
// engines hold them: the client never converts them on its own. These helpers convert between
// those bytes and float32 for callers that compute in float32. Conversions to a 16-bit type round
// to nearest, ties to even (as numpy, torch and CUDA do); values too large become ±Inf; NaN stays
// NaN (its payload kept where the narrower type can hold it); signed zeros and subnormals are
// exact. Every float16 and bfloat16 value widens to float32 exactly, so narrowing a widened value
// gives back the same bits.

// ItemSize is the size in bytes of one element of d: 4 for float32, 2 for float16 and bfloat16,
// 0 for DTYPE_UNSPECIFIED and unknown values.
func ItemSize(d pb.DType) int {
	switch d {
	case pb.DType_DTYPE_FLOAT32:
		return 4
	case pb.DType_DTYPE_FLOAT16, pb.DType_DTYPE_BFLOAT16:
		return 2
	}
	return 0
}

// Float16FromFloat32 is the IEEE 754 binary16 bit pattern nearest to f.
func Float16FromFloat32(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int(b>>23) & 0xff
	mant := b & 0x7fffff
	if exp == 0xff { // Inf or NaN.
		if mant == 0 {
			return sign | 0x7c00
		}
		m := uint16(mant >> 13)
		if m == 0 { // The payload sits in bits binary16 drops: stay a (quiet) NaN.
			m = 0x200
		}
		return sign | 0x7c00 | m
	}
	e := exp - 127 + 15 // binary16 biased exponent.
	if e >= 0x1f {
		return sign | 0x7c00
	}
	if e <= 0 { // A binary16 subnormal (or zero) in units of 2^-24.
		if e < -10 { // Below 2^-25: rounds to zero.
			return sign
		}
		mant |= 0x800000
		shift := uint(14 - e)
		h := mant >> shift
		rem := mant & (1<<shift - 1)
		half := uint32(1) << (shift - 1)
		if rem > half || rem == half && h&1 == 1 {
			h++ // May carry into the smallest normal, 0x0400: the right encoding.
		}
		return sign | uint16(h)
	}
	h := uint32(e)<<10 | mant>>13
	rem := mant & 0x1fff
	if rem > 0x1000 || rem == 0x1000 && h&1 == 1 {
		h++ // May carry into the exponent, up to 0x7c00 (Inf): the right encoding.
	}
	return sign | uint16(h)
}

// Float16ToFloat32 widens a binary16 bit pattern to float32 (exact).
func Float16ToFloat32(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h & 0x3ff)
	switch {
	case exp == 0x1f:
		return math.Float32frombits(sign | 0x7f800000 | mant<<13)
	case exp == 0 && mant == 0:
		return math.Float32frombits(sign)
	case exp == 0: // Subnormal: normalize into a float32 normal.
		e := uint32(127 - 15 + 1)
		for mant&0x400 == 0 {
			mant <<= 1
			e--
		}
		return math.Float32frombits(sign | e<<23 | (mant&0x3ff)<<13)
	}
	return math.Float32frombits(sign | (exp+127-15)<<23 | mant<<13)
}

// BFloat16FromFloat32 is the bfloat16 bit pattern (the upper half of a binary32) nearest to f.
func BFloat16FromFloat32(f float32) uint16 {
	b := math.Float32bits(f)
	if b&0x7fffffff > 0x7f800000 { // NaN.
		if b&0x007f0000 == 0 { // The payload sits in the dropped half: stay a (quiet) NaN.
			return uint16(b>>16) | 0x0040
		}
		return uint16(b >> 16)
	}
	b += 0x7fff + (b>>16)&1 // Round to nearest, ties to even; overflow carries into Inf.
	return uint16(b >> 16)
}

// BFloat16ToFloat32 widens a bfloat16 bit pattern to float32 (exact).
func BFloat16ToFloat32(b uint16) float32 {
	return math.Float32frombits(uint32(b) << 16)
}

// EncodeFloat32s is values as little-endian bytes of dtype d (len(values) * ItemSize(d) bytes),
// ready for LayerBytes. An error for DTYPE_UNSPECIFIED and unknown dtypes.
func EncodeFloat32s(d pb.DType, values []float32) ([]byte, error) {
	size := ItemSize(d)
	if size == 0 {
		return nil, fmt.Errorf("nexuskv: cannot encode to dtype %v", d)
	}
	out := make([]byte, len(values)*size)
	for i, v := range values {
		switch d {
		case pb.DType_DTYPE_FLOAT32:
			binary.LittleEndian.PutUint32(out[4*i:], math.Float32bits(v))
		case pb.DType_DTYPE_FLOAT16:
			binary.LittleEndian.PutUint16(out[2*i:], Float16FromFloat32(v))
		case pb.DType_DTYPE_BFLOAT16:
			binary.LittleEndian.PutUint16(out[2*i:], BFloat16FromFloat32(v))
		}
	}
	return out, nil
}

// DecodeFloat32s widens little-endian bytes of dtype d (a CacheLayer's keys or values) to float32.
// An error when d is unspecified or unknown, or len(data) is not a multiple of ItemSize(d).
func DecodeFloat32s(d pb.DType, data []byte) ([]float32, error) {
	size := ItemSize(d)
	if size == 0 || len(data)%size != 0 {
		return nil, fmt.Errorf("nexuskv: %d bytes are not a whole number of %v elements", len(data), d)
	}
	out := make([]float32, len(data)/size)
	for i := range out {
		switch d {
		case pb.DType_DTYPE_FLOAT32:
			out[i] = math.Float32frombits(binary.LittleEndian.Uint32(data[4*i:]))
		case pb.DType_DTYPE_FLOAT16:
			out[i] = Float16ToFloat32(binary.LittleEndian.Uint16(data[2*i:]))
		case pb.DType_DTYPE_BFLOAT16:
			out[i] = BFloat16ToFloat32(binary.LittleEndian.Uint16(data[2*i:]))
		}
	}
	return out, nil
}

// float32sLE and int64sLE decode the float32 bias and int64 positions of a CacheLayer; the
// caller has checked the length.
func float32sLE(data []byte) []float32 {
	out := make([]float32, len(data)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(data[4*i:]))
	}
	return out
}

func int64sLE(data []byte) []int64 {
	out := make([]int64, len(data)/8)
	for i := range out {
		out[i] = int64(binary.LittleEndian.Uint64(data[8*i:]))
	}
	return out
}
