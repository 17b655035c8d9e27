package nexuskv

import (
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Error is every error a Client method returns: the gRPC status (the server's code and message
// unchanged, or a client-side one, see the package comment) plus which call and session it came
// from. It implements GRPCStatus, so status.FromError, status.Code and status.Convert see the
// original code and message:
//
//	if status.Code(err) == codes.NotFound { ... }
type Error struct {
	RPC       string // "AppendSegment", "GetCache", "GetSession", "ListSessions", "DeleteSession"
	SessionID string // Empty for ListSessions.
	status    *status.Status
}

// Error formats as "nexuskv: GetCache chat-42: code = NotFound desc = <server message>".
func (e *Error) Error() string {
	where := e.RPC
	if e.SessionID != "" {
		where += " " + e.SessionID
	}
	return fmt.Sprintf("nexuskv: %s: code = %s desc = %s", where, e.status.Code(), e.status.Message())
}

// GRPCStatus is the status as the server (or the client-side check) gave it.
func (e *Error) GRPCStatus() *status.Status { return e.status }

// Code is the gRPC status code.
func (e *Error) Code() codes.Code { return e.status.Code() }

// Message is the server's message (or the client-side check's), without the call's context.
func (e *Error) Message() string { return e.status.Message() }

// Is reports whether target is a *Error or gRPC status error of the same code, so that
// errors.Is(err, status.Error(codes.NotFound, "")) works too.
func (e *Error) Is(target error) bool {
	if t, ok := target.(*Error); ok {
		return t.Code() == e.Code()
	}
	if t, ok := target.(interface{ GRPCStatus() *status.Status }); ok {
		return t.GRPCStatus().Code() == e.Code()
	}
	return false
}

// wrapError converts an error of a gRPC call (a status error, or a context error raised before
// the call reached gRPC) into an *Error, once, at the boundary.
func wrapError(rpc, sessionID string, err error) error {
	if err == nil {
		return nil
	}
	if e, ok := err.(*Error); ok {
		return e
	}
	return &Error{RPC: rpc, SessionID: sessionID, status: status.Convert(statusOf(err))}
}

// statusOf maps context errors to their gRPC codes (status.Convert alone would make them
// Unknown); anything else is left to status.Convert.
func statusOf(err error) error {
	if _, ok := status.FromError(err); ok {
		return err
	}
	if s := status.FromContextError(err); s.Code() != codes.Unknown {
		return s.Err()
	}
	return err
}

// newError is a client-side error of the given code.
func newError(rpc, sessionID string, code codes.Code, format string, args ...interface{}) error {
	return &Error{RPC: rpc, SessionID: sessionID, status: status.Newf(code, format, args...)}
}
