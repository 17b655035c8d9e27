package nexuskv_test

// A real nexuskv-server child process for the tests: build/bin/nexuskv-server of this checkout, or
// $NEXUSKV_SERVER, on a free loopback port with its own temporary data directory.

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health/grpc_health_v1"

	nexuskv "github.com/nexuskv/nexuskv/clients/go"
)

type serverProcess struct {
	target string
	dir    string
	log    string
	cmd    *exec.Cmd
	exited chan struct{}
}

// serverBinary is $NEXUSKV_SERVER, else build/bin/nexuskv-server found upward from the package.
func serverBinary() (string, error) {
	if env := os.Getenv("NEXUSKV_SERVER"); env != "" {
		return env, nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		candidate := filepath.Join(dir, "build", "bin", "nexuskv-server")
		if _, err := os.Stat(candidate); err == nil {
			return candidate, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("nexuskv-server not found in build/bin above the package: build it " +
				"(cmake --build build --target nexuskv-server) or set NEXUSKV_SERVER")
		}
		dir = parent
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// startServer runs the server with extra flags and waits until its health check answers SERVING
// over a channel made with dial (plaintext when nil).
func startServer(dial grpc.DialOption, flags ...string) (*serverProcess, error) {
	binary, err := serverBinary()
	if err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "nexuskv-go-test-")
	if err != nil {
		return nil, err
	}
	s := &serverProcess{
		target: fmt.Sprintf("127.0.0.1:%d", port),
		dir:    dir,
		log:    filepath.Join(dir, "server.log"),
		exited: make(chan struct{}),
	}
	logFile, err := os.Create(s.log)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	args := append([]string{
		"--listen=" + s.target,
		"--data_dir=" + filepath.Join(dir, "db"),
		"--sync_writes=false",
		"--shutdown_grace_s=2",
	}, flags...)
	s.cmd = exec.Command(binary, args...)
	s.cmd.Stdout, s.cmd.Stderr = logFile, logFile
	s.cmd.SysProcAttr = childAttributes()
	if err := s.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start %s: %w", binary, err)
	}
	go func() { s.cmd.Wait(); close(s.exited) }()

	if dial == nil {
		dial = grpc.WithInsecure()
	}
	conn, err := grpc.Dial(s.target, dial)
	if err != nil {
		s.stop()
		return nil, err
	}
	defer conn.Close()
	health := grpc_health_v1.NewHealthClient(conn)
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
		select {
		case <-s.exited:
			err := fmt.Errorf("nexuskv-server exited (%v):\n%s", s.cmd.ProcessState, s.logTail())
			os.RemoveAll(dir)
			return nil, err
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		r, err := health.Check(ctx, &grpc_health_v1.HealthCheckRequest{})
		cancel()
		if err == nil && r.Status == grpc_health_v1.HealthCheckResponse_SERVING {
			return s, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	tail := s.logTail()
	s.stop()
	return nil, fmt.Errorf("nexuskv-server not SERVING after 30 s:\n%s", tail)
}

func (s *serverProcess) logTail() string {
	data, _ := os.ReadFile(s.log)
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > 30 {
		lines = lines[len(lines)-30:]
	}
	return strings.Join(lines, "\n")
}

// stop sends SIGTERM, then SIGKILL after 10 s, and removes the data directory.
func (s *serverProcess) stop() {
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		s.cmd.Process.Kill()
		<-s.exited
	}
	os.RemoveAll(s.dir)
}

var (
	sharedOnce   sync.Once
	sharedServer *serverProcess
	sharedErr    error
)

// plainServer is one plaintext server shared by the tests of this package (started by the first
// test that needs it, stopped by TestMain).
func plainServer(t *testing.T) *serverProcess {
	t.Helper()
	sharedOnce.Do(func() { sharedServer, sharedErr = startServer(nil) })
	if sharedErr != nil {
		t.Fatal(sharedErr)
	}
	return sharedServer
}

func TestMain(m *testing.M) {
	code := m.Run()
	if sharedServer != nil {
		sharedServer.stop()
	}
	os.Exit(code)
}

// newClient connects to s with options and closes the client when the test ends.
func newClient(t *testing.T, s *serverProcess, options nexuskv.Options) *nexuskv.Client {
	t.Helper()
	c, err := nexuskv.New(s.target, options)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
