package sekhaclient_test

// AsError over statuses built here, for the details the end-to-end tests
// cannot provoke cheaply (quota, retry, resource).

import (
	"errors"
	"io"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"sekha.dev/gateway/clients/go/sekhaclient"
)

func TestAsErrorParsesEveryDetailKind(t *testing.T) {
	st, err := status.New(codes.ResourceExhausted, "budget used up").WithDetails(
		&errdetails.QuotaFailure{Violations: []*errdetails.QuotaFailure_Violation{
			{Subject: "caller:alice", Description: "daily budget of 1.00 USD spent"},
		}},
		&errdetails.RetryInfo{RetryDelay: durationpb.New(1500 * time.Millisecond)},
		&errdetails.ErrorInfo{Reason: "BUDGET_EXHAUSTED", Domain: "router.sekha.dev",
			Metadata: map[string]string{"period": "day"}},
		&errdetails.ResourceInfo{ResourceType: "collection", ResourceName: "docs_384"},
	)
	if err != nil {
		t.Fatalf("WithDetails: %v", err)
	}
	e, ok := sekhaclient.AsError(st.Err())
	if !ok {
		t.Fatal("AsError found no status")
	}
	d := e.Details
	if e.Code != codes.ResourceExhausted || e.Message != "budget used up" {
		t.Errorf("code/message = %v / %q", e.Code, e.Message)
	}
	if len(d.QuotaViolations) != 1 || d.QuotaViolations[0].Subject != "caller:alice" {
		t.Errorf("quota violations = %v", d.QuotaViolations)
	}
	if d.RetryAfter == nil || *d.RetryAfter != 1500*time.Millisecond {
		t.Errorf("retry after = %v", d.RetryAfter)
	}
	if d.Reason != "BUDGET_EXHAUSTED" || d.Domain != "router.sekha.dev" || d.Metadata["period"] != "day" {
		t.Errorf("error info = %q %q %v", d.Reason, d.Domain, d.Metadata)
	}
	if d.Resource == nil || *d.Resource != (sekhaclient.Resource{Type: "collection", Name: "docs_384"}) {
		t.Errorf("resource = %v", d.Resource)
	}
	if status.Code(e) != codes.ResourceExhausted {
		t.Errorf("status.Code(*Error) = %v", status.Code(e))
	}
}

func TestAsErrorWithoutAStatus(t *testing.T) {
	for _, err := range []error{nil, io.EOF, errors.New("not a status")} {
		if e, ok := sekhaclient.AsError(err); ok {
			t.Errorf("AsError(%v) = %v, want no status", err, e)
		}
	}
}
