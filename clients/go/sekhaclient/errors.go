package sekhaclient

import (
	"fmt"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Error is a failed call: its status code, the server's message and the
// google.rpc details the Sekha servers attach (see docs/ARCHITECTURE.md's
// error table), so callers branch on fields instead of parsing messages.
type Error struct {
	Code    codes.Code
	Message string
	Details ErrorDetails
	status  *status.Status
}

// ErrorDetails holds the parsed google.rpc details; a detail the server did
// not send is empty.
type ErrorDetails struct {
	// FieldViolations (BadRequest) name the request fields an INVALID_ARGUMENT rejects.
	FieldViolations []FieldViolation
	// PreconditionViolations (PreconditionFailure) explain a FAILED_PRECONDITION.
	PreconditionViolations []PreconditionViolation
	// QuotaViolations (QuotaFailure) name the budget or limit a RESOURCE_EXHAUSTED hit.
	QuotaViolations []QuotaViolation
	// Reason, Domain and Metadata come from ErrorInfo.
	Reason   string
	Domain   string
	Metadata map[string]string
	// RetryAfter (RetryInfo) is how long to wait before retrying; nil when not sent.
	RetryAfter *time.Duration
	// Resource (ResourceInfo) names a missing or existing resource; nil when not sent.
	Resource *Resource
}

// FieldViolation is one rejected request field, e.g. "generation.temperature".
type FieldViolation struct {
	Field       string
	Description string
}

// PreconditionViolation is one unmet precondition, e.g. type NO_MODEL.
type PreconditionViolation struct {
	Type        string
	Subject     string
	Description string
}

// QuotaViolation is one exhausted quota.
type QuotaViolation struct {
	Subject     string
	Description string
}

// Resource is the resource a NOT_FOUND or ALREADY_EXISTS is about.
type Resource struct {
	Type string
	Name string
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s: %s", e.Code, e.Message)
}

// GRPCStatus keeps status.Code and status.FromError working on an *Error.
func (e *Error) GRPCStatus() *status.Status { return e.status }

// AsError parses the status of a failed call. ok is false when err is nil or
// carries no gRPC status (io.EOF, a dial option error).
func AsError(err error) (*Error, bool) {
	if err == nil {
		return nil, false
	}
	if already, is := err.(*Error); is {
		return already, true
	}
	st, ok := status.FromError(err)
	if !ok {
		return nil, false
	}
	return &Error{Code: st.Code(), Message: st.Message(), Details: parseDetails(st), status: st}, true
}

func parseDetails(st *status.Status) ErrorDetails {
	var out ErrorDetails
	for _, detail := range st.Details() {
		switch d := detail.(type) {
		case *errdetails.BadRequest:
			for _, v := range d.GetFieldViolations() {
				out.FieldViolations = append(out.FieldViolations, FieldViolation{v.GetField(), v.GetDescription()})
			}
		case *errdetails.PreconditionFailure:
			for _, v := range d.GetViolations() {
				out.PreconditionViolations = append(out.PreconditionViolations,
					PreconditionViolation{v.GetType(), v.GetSubject(), v.GetDescription()})
			}
		case *errdetails.QuotaFailure:
			for _, v := range d.GetViolations() {
				out.QuotaViolations = append(out.QuotaViolations, QuotaViolation{v.GetSubject(), v.GetDescription()})
			}
		case *errdetails.ErrorInfo:
			out.Reason, out.Domain, out.Metadata = d.GetReason(), d.GetDomain(), d.GetMetadata()
		case *errdetails.RetryInfo:
			if d.GetRetryDelay() != nil {
				delay := d.GetRetryDelay().AsDuration()
				out.RetryAfter = &delay
			}
		case *errdetails.ResourceInfo:
			out.Resource = &Resource{Type: d.GetResourceType(), Name: d.GetResourceName()}
		}
		// A detail of an unknown type (or one that failed to unpack, which
		// Details reports as an error value) is skipped: the code and message
		// still stand on their own.
	}
	return out
}
