package nexuskv_test

import "syscall"

// childAttributes make the kernel SIGTERM the server when the test process dies, so a killed
// `go test` leaves no orphan server.
func childAttributes() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
}
