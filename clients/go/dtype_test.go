package nexuskv_test

import (
	"math"
	"testing"

	nexuskv "github.com/nexuskv/nexuskv/clients/go"
	pb "github.com/nexuskv/nexuskv/clients/go/nexuskvpb"
)

func isNaN32(f float32) bool { return f != f }

// Every binary16 pattern widens to float32 and narrows back to itself: the widening is exact and
// the narrowing keeps NaN payloads that fit.
func TestFloat16RoundTripOfEveryPattern(t *testing.T) {
	for h := 0; h <= 0xffff; h++ {
		f := nexuskv.Float16ToFloat32(uint16(h))
		if back := nexuskv.Float16FromFloat32(f); back != uint16(h) {
			t.Fatalf("0x%04x -> %v (0x%08x) -> 0x%04x", h, f, math.Float32bits(f), back)
		}
		if exp := h >> 10 & 0x1f; exp == 0x1f && h&0x3ff != 0 && !isNaN32(f) {
			t.Fatalf("NaN 0x%04x widened to %v", h, f)
		}
	}
}

func TestBFloat16RoundTripOfEveryPattern(t *testing.T) {
	for b := 0; b <= 0xffff; b++ {
		f := nexuskv.BFloat16ToFloat32(uint16(b))
		if math.Float32bits(f) != uint32(b)<<16 {
			t.Fatalf("0x%04x widened to 0x%08x", b, math.Float32bits(f))
		}
		if back := nexuskv.BFloat16FromFloat32(f); back != uint16(b) {
			t.Fatalf("0x%04x -> %v -> 0x%04x", b, f, back)
		}
	}
}

func TestFloat16SpecialValuesAndRounding(t *testing.T) {
	for _, c := range []struct {
		name string
		in   float32
		want uint16
	}{
		{"+0", 0, 0x0000},
		{"-0", float32(math.Copysign(0, -1)), 0x8000},
		{"1", 1, 0x3c00},
		{"-2", -2, 0xc000},
		{"+Inf", float32(math.Inf(1)), 0x7c00},
		{"-Inf", float32(math.Inf(-1)), 0xfc00},
		{"largest finite", 65504, 0x7bff},
		{"just under the Inf tie rounds down", 65519.996, 0x7bff},
		{"the Inf tie rounds to even: Inf", 65520, 0x7c00},
		{"overflow", 1e10, 0x7c00},
		{"smallest normal", 1.0 / (1 << 14), 0x0400},
		{"largest subnormal", float32(1023.0 / (1 << 24)), 0x03ff},
		{"smallest subnormal", 1.0 / (1 << 24), 0x0001},
		{"half the smallest subnormal ties to even: 0", 1.0 / (1 << 25), 0x0000},
		{"just over half the smallest subnormal", float32(1.0000001 / (1 << 25)), 0x0001},
		{"1.5 smallest subnormals tie to even: 2", float32(3.0 / (1 << 25)), 0x0002},
		{"far below the subnormals", 1e-30, 0x0000},
		{"negative underflow keeps the sign", -1e-30, 0x8000},
		{"1 + half an ulp ties to even: 1", 1 + 1.0/(1<<11), 0x3c00},
		{"1 + 3 half ulps ties to even: 1 + 2 ulps", 1 + 3.0/(1<<11), 0x3c02},
		{"1 + just over half an ulp rounds up", 1 + 1.0/(1<<11) + 1.0/(1<<20), 0x3c01},
		{"a subnormal tie carries into the smallest normal", float32(2047.0 / (1 << 25)), 0x0400},
		{"0.1", 0.1, 0x2e66},
		{"pi", math.Pi, 0x4248},
	} {
		if got := nexuskv.Float16FromFloat32(c.in); got != c.want {
			t.Errorf("%s: nexuskv.Float16FromFloat32(%g) = 0x%04x, want 0x%04x", c.name, c.in, got, c.want)
		}
	}
	nan := nexuskv.Float16FromFloat32(float32(math.NaN()))
	if nan&0x7c00 != 0x7c00 || nan&0x3ff == 0 {
		t.Errorf("NaN narrowed to 0x%04x, not a NaN", nan)
	}
	// A float32 NaN whose payload sits only in the low bits must not become Inf.
	low := math.Float32frombits(0x7f800001)
	if h := nexuskv.Float16FromFloat32(low); h&0x3ff == 0 {
		t.Errorf("NaN 0x7f800001 narrowed to 0x%04x (Inf)", h)
	}
	if got := nexuskv.Float16ToFloat32(0x0001); got != 1.0/(1<<24) {
		t.Errorf("smallest subnormal widened to %g", got)
	}
	if got := nexuskv.Float16ToFloat32(0xfc00); !math.IsInf(float64(got), -1) {
		t.Errorf("-Inf widened to %g", got)
	}
}

func TestBFloat16SpecialValuesAndRounding(t *testing.T) {
	for _, c := range []struct {
		name string
		in   float32
		want uint16
	}{
		{"+0", 0, 0x0000},
		{"-0", float32(math.Copysign(0, -1)), 0x8000},
		{"1", 1, 0x3f80},
		{"+Inf", float32(math.Inf(1)), 0x7f80},
		{"-Inf", float32(math.Inf(-1)), 0xff80},
		{"largest float32 rounds to Inf", math.MaxFloat32, 0x7f80},
		{"largest bfloat16", math.Float32frombits(0x7f7f0000), 0x7f7f},
		{"1 + half an ulp ties to even: 1", 1 + 1.0/(1<<8), 0x3f80},
		{"1 + 3 half ulps ties to even: 1 + 2 ulps", 1 + 3.0/(1<<8), 0x3f82},
		{"1 + just over half an ulp rounds up", 1 + 1.0/(1<<8) + 1.0/(1<<20), 0x3f81},
		{"float32 subnormal", math.Float32frombits(0x00010000), 0x0001},
		{"0.1", 0.1, 0x3dcd},
		{"-pi", -math.Pi, 0xc049},
	} {
		if got := nexuskv.BFloat16FromFloat32(c.in); got != c.want {
			t.Errorf("%s: nexuskv.BFloat16FromFloat32(%g) = 0x%04x, want 0x%04x", c.name, c.in, got, c.want)
		}
	}
	for _, bits := range []uint32{0x7fc00000, 0xffc00000, 0x7f800001, 0x7fbfffff} {
		b := nexuskv.BFloat16FromFloat32(math.Float32frombits(bits))
		if !isNaN32(nexuskv.BFloat16ToFloat32(b)) {
			t.Errorf("NaN 0x%08x narrowed to 0x%04x, not a NaN", bits, b)
		}
		if b>>15 != uint16(bits>>31) {
			t.Errorf("NaN 0x%08x lost its sign: 0x%04x", bits, b)
		}
	}
}

func TestEncodeDecodeFloat32s(t *testing.T) {
	values := []float32{0, 1, -2.5, 65504, float32(math.Inf(-1)), 1.0 / (1 << 24)}
	for _, c := range []struct {
		dtype pb.DType
		want  []byte  // Little-endian bytes of values.
		round float32 // What 65504 (values[3]) becomes: bfloat16 has 8 significant bits.
	}{
		{pb.DType_DTYPE_FLOAT32, []byte{0, 0, 0, 0, 0, 0, 0x80, 0x3f, 0, 0, 0x20, 0xc0,
			0, 0xe0, 0x7f, 0x47, 0, 0, 0x80, 0xff, 0, 0, 0x80, 0x33}, 65504},
		{pb.DType_DTYPE_FLOAT16, []byte{0, 0, 0, 0x3c, 0x00, 0xc1, 0xff, 0x7b, 0, 0xfc, 0x01, 0}, 65504},
		{pb.DType_DTYPE_BFLOAT16, []byte{0, 0, 0x80, 0x3f, 0x20, 0xc0, 0x80, 0x47, 0x80, 0xff, 0x80, 0x33}, 65536},
	} {
		got, err := nexuskv.EncodeFloat32s(c.dtype, values)
		if err != nil || string(got) != string(c.want) {
			t.Fatalf("%v: EncodeFloat32s = % x, %v; want % x", c.dtype, got, err, c.want)
		}
		back, err := nexuskv.DecodeFloat32s(c.dtype, got)
		if err != nil {
			t.Fatalf("%v: DecodeFloat32s: %v", c.dtype, err)
		}
		for i, v := range values {
			if i == 3 {
				v = c.round
			}
			if back[i] != v {
				t.Errorf("%v: value %d: %g came back as %g", c.dtype, i, v, back[i])
			}
		}
	}
	if _, err := nexuskv.DecodeFloat32s(pb.DType_DTYPE_FLOAT16, []byte{1, 2, 3}); err == nil {
		t.Error("3 bytes decoded as float16")
	}
	if _, err := nexuskv.EncodeFloat32s(pb.DType_DTYPE_UNSPECIFIED, values); err == nil {
		t.Error("encoded to DTYPE_UNSPECIFIED")
	}
	if nexuskv.ItemSize(pb.DType_DTYPE_FLOAT32) != 4 || nexuskv.ItemSize(pb.DType_DTYPE_BFLOAT16) != 2 || nexuskv.ItemSize(pb.DType(99)) != 0 {
		t.Error("ItemSize")
	}
}
