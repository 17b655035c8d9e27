package nexuskv_test

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"testing"

	nexuskv "github.com/nexuskv/nexuskv/clients/go"
	"github.com/nexuskv/nexuskv/clients/go/internal/synthetic"
	pb "github.com/nexuskv/nexuskv/clients/go/nexuskvpb"
)

// A session appended by another process (the example program, built and run here) resumes in
// this one: the example's own resume fits keep 0.2, and a FULL answer here returns exactly the
// bytes it sent.
func TestResumeFromAnotherProcess(t *testing.T) {
	s := plainServer(t)
	example := filepath.Join(t.TempDir(), "nexuskv-go-example")
	goTool, err := exec.LookPath("go") // runtime.GOROOT() is empty under -trimpath.
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	out, err := exec.Command(goTool, "build", "-o", example, "./cmd/nexuskv-go-example").CombinedOutput()
	if err != nil {
		t.Fatalf("go build the example: %v\n%s", err, out)
	}
	id := sessionID(t)
	out, err = exec.Command(example, "-target", s.target, "-session", id, "-keep", "0.2", "-seed", "5").CombinedOutput()
	if err != nil {
		t.Fatalf("example: %v\n%s", err, out)
	}
	t.Logf("example output:\n%s", out)
	spec := synthetic.SmolLM2()
	lengths := []int{48, 80} // The example's two turns.
	kept := regexp.MustCompile(`(?m)^layer +(\d+): +(\d+) entries per kv head$`).FindAllSubmatch(out, -1)
	if len(kept) != int(spec.NumLayers) {
		t.Fatalf("the example printed %d layers, want %d:\n%s", len(kept), spec.NumLayers, out)
	}
	for i, m := range kept {
		n, _ := strconv.Atoi(string(m[2]))
		if string(m[1]) != strconv.Itoa(i) || n < 1 || n > 25 { // At most floor(0.2 * 128) of 128 tokens.
			t.Fatalf("layer %s: %d entries at keep_ratio 0.2 of 128 tokens", m[1], n)
		}
	}

	c := newClient(t, s, nexuskv.Options{})
	info, err := c.GetSession(context.Background(), id)
	if err != nil || info.NumTurns != 2 || info.NextPosition != 128 || info.Model.ModelId != spec.ModelId {
		t.Fatalf("session appended by the example: %v, %v", info, err)
	}
	cache, err := c.GetCache(context.Background(), &pb.GetCacheRequest{SessionId: id, Method: pb.Method_FULL})
	if err != nil {
		t.Fatal(err)
	}
	turns := []*nexuskv.Turn{
		{Model: spec, Layers: synthetic.Layers(spec, 5, 0, lengths[0], 16)},
		{Model: spec, Layers: synthetic.Layers(spec, 5, 1, lengths[1], 16)},
	}
	for l, layer := range cache.Layers {
		if !bytes.Equal(layer.Keys, wantFull(turns, l, true)) || !bytes.Equal(layer.Values, wantFull(turns, l, false)) {
			t.Fatalf("layer %d: the bytes differ from those the other process appended", l)
		}
	}
}
