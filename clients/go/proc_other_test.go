//go:build !linux
// +build !linux

package nexuskv_test

import "syscall"

func childAttributes() *syscall.SysProcAttr { return nil }
