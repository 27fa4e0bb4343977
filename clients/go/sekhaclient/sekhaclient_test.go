package sekhaclient_test

// End-to-end tests of the Go client against a running Router service; the
// Python test tests/e2e/test_go_client.py starts one with a fake provider and
// runs `go test` with these variables:
//
//	SEKHA_ROUTER_TARGET   host:port of the router (required: unset fails, never skips)
//	SEKHA_API_KEY         the key the router accepts (the router runs with auth on)
//	SEKHA_PROVIDER_ID     the provider the router routes to
//	SEKHA_CHAT_MODEL      its chat model

import (
	"context"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	routerv1 "sekha.dev/gateway/clients/go/sekha/router/v1"
	"sekha.dev/gateway/clients/go/sekhaclient"
)

func requireEnv(t *testing.T, name string) string {
	t.Helper()
	value := os.Getenv(name)
	if value == "" {
		t.Fatalf("%s is not set: start a router (see tests/e2e/test_go_client.py) and export it", name)
	}
	return value
}

func dialRouter(t *testing.T, apiKey string) *sekhaclient.Conn {
	t.Helper()
	conn, err := sekhaclient.Dial(sekhaclient.Config{
		Target:         requireEnv(t, "SEKHA_ROUTER_TARGET"),
		APIKey:         apiKey,
		DefaultTimeout: 30 * time.Second,
	})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func router(t *testing.T) routerv1.RouterServiceClient {
	t.Helper()
	return dialRouter(t, requireEnv(t, "SEKHA_API_KEY")).Router()
}

var chatRouting = &routerv1.RoutingPreferences{Task: routerv1.Task_TASK_CHAT_SMART}

func TestEnvironmentIsSet(t *testing.T) {
	for _, name := range []string{"SEKHA_ROUTER_TARGET", "SEKHA_API_KEY", "SEKHA_PROVIDER_ID", "SEKHA_CHAT_MODEL"} {
		requireEnv(t, name)
	}
}

func TestHealthReportsServing(t *testing.T) {
	// Health needs no key: load balancers probe without one.
	conn := dialRouter(t, "")
	for _, service := range []string{"", "sekha.router.v1.RouterService"} {
		got, err := conn.Health(context.Background(), service)
		if err != nil {
			t.Fatalf("health %q: %v", service, err)
		}
		if got != "SERVING" {
			t.Fatalf("health %q = %s, want SERVING", service, got)
		}
	}
}

func TestChatReturnsTheProviderReplyWithUsageAndRouting(t *testing.T) {
	reply, err := router(t).Chat(context.Background(), &routerv1.ChatRequest{
		Routing:    chatRouting,
		Messages:   []*routerv1.ChatMessage{sekhaclient.UserText("Say hello from Go.")},
		Generation: &routerv1.GenerationConfig{MaxTokens: int32Ptr(32)},
		RequestId:  "go-chat-1",
	})
	if err != nil {
		t.Fatalf("Chat: %v", err)
	}
	// The fake provider answers "echo: <last user text>".
	if reply.GetText() != "echo: Say hello from Go." {
		t.Errorf("text = %q", reply.GetText())
	}
	if reply.GetRequestId() != "go-chat-1" {
		t.Errorf("request_id = %q, want go-chat-1", reply.GetRequestId())
	}
	if reply.GetUsage().GetInputTokens() <= 0 || reply.GetUsage().GetOutputTokens() <= 0 {
		t.Errorf("usage = %v, want positive token counts", reply.GetUsage())
	}
	if reply.GetFinishReason() != routerv1.FinishReason_FINISH_REASON_STOP {
		t.Errorf("finish_reason = %v", reply.GetFinishReason())
	}
	assertChosen(t, reply.GetRouting())
	if reply.GetCost().CostUsd == nil || reply.GetCost().GetCostUsd() <= 0 {
		t.Errorf("cost = %v, want a positive cost_usd (the model has a price)", reply.GetCost())
	}
}

func TestStreamChatSendsDeltasThenOneSummary(t *testing.T) {
	stream, err := router(t).StreamChat(context.Background(), &routerv1.StreamChatRequest{
		Routing:    chatRouting,
		Messages:   []*routerv1.ChatMessage{sekhaclient.UserText("Tell a short story in Go.")},
		Generation: &routerv1.GenerationConfig{MaxTokens: int32Ptr(64)},
		RequestId:  "go-stream-1",
	})
	if err != nil {
		t.Fatalf("StreamChat: %v", err)
	}
	text, deltas, summary, err := sekhaclient.CollectStream(stream)
	if err != nil {
		t.Fatalf("stream: %v", err)
	}
	if text != "echo: Tell a short story in Go." {
		t.Errorf("streamed text = %q", text)
	}
	// The fake streams its reply word by word.
	if deltas < 2 {
		t.Errorf("%d deltas, want one per word", deltas)
	}
	if summary.GetRequestId() != "go-stream-1" {
		t.Errorf("summary.request_id = %q", summary.GetRequestId())
	}
	if summary.GetUsage().GetOutputTokens() <= 0 {
		t.Errorf("summary.usage = %v", summary.GetUsage())
	}
	assertChosen(t, summary.GetRouting())
}

func TestInvalidChatNamesEachFieldInBadRequest(t *testing.T) {
	_, err := router(t).Chat(context.Background(), &routerv1.ChatRequest{
		Routing:  chatRouting,
		Messages: []*routerv1.ChatMessage{sekhaclient.UserText("hi")},
		Generation: &routerv1.GenerationConfig{
			Temperature: float32Ptr(3),
			TopP:        float32Ptr(2),
		},
	})
	e := requireError(t, err, codes.InvalidArgument)
	fields := make([]string, 0, len(e.Details.FieldViolations))
	for _, v := range e.Details.FieldViolations {
		if v.Description == "" {
			t.Errorf("violation of %s has no description", v.Field)
		}
		fields = append(fields, v.Field)
	}
	sort.Strings(fields)
	if strings.Join(fields, ",") != "generation.temperature,generation.top_p" {
		t.Errorf("field violations = %v", e.Details.FieldViolations)
	}
}

func TestInvalidStreamFailsOnRecvWithBadRequest(t *testing.T) {
	stream, err := router(t).StreamChat(context.Background(), &routerv1.StreamChatRequest{Routing: chatRouting})
	if err != nil {
		t.Fatalf("StreamChat: %v", err)
	}
	_, _, _, err = sekhaclient.CollectStream(stream)
	e := requireError(t, err, codes.InvalidArgument)
	if len(e.Details.FieldViolations) != 1 || e.Details.FieldViolations[0].Field != "messages" {
		t.Errorf("field violations = %v, want one on messages", e.Details.FieldViolations)
	}
}

func TestNoFittingModelCarriesPreconditionFailureAndErrorInfo(t *testing.T) {
	// The only chat model has no vision capability.
	_, err := router(t).Chat(context.Background(), &routerv1.ChatRequest{
		Routing: &routerv1.RoutingPreferences{
			Task:                 routerv1.Task_TASK_CHAT_SMART,
			RequiredCapabilities: []routerv1.Capability{routerv1.Capability_CAPABILITY_VISION},
		},
		Messages: []*routerv1.ChatMessage{sekhaclient.UserText("hi")},
	})
	e := requireError(t, err, codes.FailedPrecondition)
	if len(e.Details.PreconditionViolations) == 0 {
		t.Fatalf("no PreconditionFailure in %+v", e.Details)
	}
	if e.Details.Reason != "NO_ROUTE" || e.Details.Domain != "router.sekha.dev" {
		t.Errorf("ErrorInfo reason=%q domain=%q, want NO_ROUTE in router.sekha.dev", e.Details.Reason, e.Details.Domain)
	}
}

func TestWithoutTheKeyTheRouterAnswersUnauthenticated(t *testing.T) {
	_, err := dialRouter(t, "").Router().Chat(context.Background(), &routerv1.ChatRequest{
		Routing:  chatRouting,
		Messages: []*routerv1.ChatMessage{sekhaclient.UserText("hi")},
	})
	requireError(t, err, codes.Unauthenticated)
}

func requireError(t *testing.T, err error, want codes.Code) *sekhaclient.Error {
	t.Helper()
	if err == nil {
		t.Fatalf("call succeeded, want %s", want)
	}
	e, ok := sekhaclient.AsError(err)
	if !ok {
		t.Fatalf("error without a gRPC status: %v", err)
	}
	if e.Code != want || status.Code(e) != want {
		t.Fatalf("got %v, want %s", e, want)
	}
	if e.Message == "" {
		t.Errorf("%s without a message", e.Code)
	}
	return e
}

func assertChosen(t *testing.T, routing *routerv1.RoutingDecision) {
	t.Helper()
	chosen := routing.GetChosen()
	wantProvider, wantModel := requireEnv(t, "SEKHA_PROVIDER_ID"), requireEnv(t, "SEKHA_CHAT_MODEL")
	if chosen.GetProviderId() != wantProvider || chosen.GetModel() != wantModel {
		t.Errorf("routing.chosen = %v, want %s/%s", chosen, wantProvider, wantModel)
	}
	if routing.GetTask() != routerv1.Task_TASK_CHAT_SMART {
		t.Errorf("routing.task = %v", routing.GetTask())
	}
}

func int32Ptr(v int32) *int32       { return &v }
func float32Ptr(v float32) *float32 { return &v }
