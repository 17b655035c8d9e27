// nexuskv-go-example appends two turns of a synthetic conversation (SmolLM2-135M's KV shape,
// bfloat16) to a nexuskv server, resumes it at a budget and prints the entries each layer got.
//
//	nexuskv-go-example -target localhost:50051 -session go-example -keep 0.2
//
// With TLS, mutual TLS or a tokens file on the server: -ca, -cert/-key, -token (or $NEXUSKV_TOKEN).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	nexuskv "github.com/nexuskv/nexuskv/clients/go"
	"github.com/nexuskv/nexuskv/clients/go/internal/synthetic"
	pb "github.com/nexuskv/nexuskv/clients/go/nexuskvpb"
)

func main() {
	target := flag.String("target", "localhost:50051", "nexuskv server address")
	session := flag.String("session", "go-example", "session id; an existing session of that id is deleted first")
	keep := flag.Float64("keep", 0.2, "keep_ratio of the resume (0.2 = 80% compression)")
	method := flag.String("method", "SONIC", "FULL, SONIC, H2O, STREAMING_LLM or SNAPKV")
	seed := flag.Int64("seed", 1, "seed of the synthetic KV")
	ca := flag.String("ca", "", "PEM CA of the server's certificate: TLS")
	cert := flag.String("cert", "", "PEM client certificate (with -key): mutual TLS")
	key := flag.String("key", "", "PEM private key of -cert")
	token := flag.String("token", os.Getenv("NEXUSKV_TOKEN"), "bearer token (default $NEXUSKV_TOKEN)")
	flag.Parse()
	if err := run(*target, *session, *keep, *method, *seed, *ca, *cert, *key, *token); err != nil {
		fmt.Fprintln(os.Stderr, "nexuskv-go-example:", err)
		os.Exit(1)
	}
}

func run(target, session string, keep float64, method string, seed int64, ca, cert, key, token string) error {
	m, ok := pb.Method_value[strings.ToUpper(method)]
	if !ok {
		return fmt.Errorf("unknown -method %q", method)
	}
	options := nexuskv.Options{Timeout: time.Minute, BearerToken: token}
	if ca != "" || cert != "" {
		tlsConfig, err := nexuskv.TLSConfigFromFiles(nexuskv.TLSFiles{RootCAFile: ca, CertFile: cert, KeyFile: key})
		if err != nil {
			return err
		}
		options.TLS = tlsConfig
	}
	client, err := nexuskv.New(target, options)
	if err != nil {
		return err
	}
	defer client.Close()
	ctx := context.Background()

	// Start from scratch: a session left by an earlier run would refuse different turns.
	if _, err := client.DeleteSession(ctx, session); err != nil && status.Code(err) != codes.NotFound {
		return err
	}
	spec := synthetic.SmolLM2()
	turns := []struct {
		role   pb.Role
		tokens int
	}{{pb.Role_ROLE_USER, 48}, {pb.Role_ROLE_ASSISTANT, 80}}
	for i, t := range turns {
		const probes = 16
		ack, err := client.AppendTurn(ctx, &nexuskv.Turn{
			SessionID:    session,
			Turn:         uint32(i),
			Role:         t.role,
			Model:        spec,
			Layers:       synthetic.Layers(spec, seed, uint32(i), t.tokens, probes),
			ProbeOffsets: synthetic.SpreadOffsets(t.tokens, probes),
		})
		if err != nil {
			return err
		}
		fmt.Printf("appended turn %d (%s): %d tokens, %d bytes, session ends at %d\n",
			ack.Turn, t.role, t.tokens, ack.StoredBytes, ack.NextPosition)
	}

	req := &pb.GetCacheRequest{SessionId: session, Method: pb.Method(m), Budget: nexuskv.KeepRatio(keep)}
	header, err := client.GetCacheFunc(ctx, req, func(h *pb.CacheHeader, layer *nexuskv.CacheLayer) error {
		// An engine would copy layer.Keys / layer.Values into its paged cache here.
		fmt.Printf("layer %2d: %3d entries per kv head\n", layer.Layer, layer.Entries)
		return nil
	})
	if err != nil {
		return err
	}
	fmt.Printf("resumed %s with %s at keep_ratio %.2f: %d tokens -> %d entries per layer (%d bytes, bias %v); next token at position %d\n",
		session, header.Method, keep, header.OriginalTokens, maxEntries(header), header.CacheBytes,
		header.HasBias, header.NextPosition)
	return nil
}

func maxEntries(h *pb.CacheHeader) uint32 {
	most := uint32(0)
	for _, n := range h.EntriesPerLayer {
		if n > most {
			most = n
		}
	}
	return most
}
