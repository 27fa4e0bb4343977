// Package sekhaclient is a thin typed layer over the generated Router and
// Embedding stubs: it owns the connection (target, TLS, API key, default
// deadline, message size) and parses the google.rpc details of a failed call
// into an *Error, mirroring the Python client (clients/python/sekha/client.py).
//
//	conn, err := sekhaclient.Dial(sekhaclient.Config{Target: "127.0.0.1:50051"})
//	reply, err := conn.Router().Chat(ctx, &routerv1.ChatRequest{
//		Messages: []*routerv1.ChatMessage{sekhaclient.UserText("hi")},
//	})
//	if e, ok := sekhaclient.AsError(err); ok { ... e.Details.FieldViolations ... }
//
// The generated packages are sekha.dev/gateway/clients/go/sekha/router/v1 and
// .../sekha/embedding/v1; use their clients directly for anything this
// package does not wrap.
package sekhaclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

	embeddingv1 "sekha.dev/gateway/clients/go/sekha/embedding/v1"
	routerv1 "sekha.dev/gateway/clients/go/sekha/router/v1"
)

// Config says where and how to connect. TLS is on when TLS is true or any
// certificate path is set.
type Config struct {
	// Target is host:port, or any gRPC target such as dns:///router:50051.
	Target string
	// TLS asks for a secure channel verified against the system roots unless
	// RootCertificates is set.
	TLS bool
	// RootCertificates is a PEM file of the CAs that signed the server's certificate.
	RootCertificates string
	// ClientCertificate and ClientKey are PEM files for mutual TLS.
	ClientCertificate string
	ClientKey         string
	// APIKey is sent as `authorization: Bearer <key>` on every call.
	APIKey string
	// DefaultTimeout bounds every call whose context has no deadline; zero
	// means 30 s, a negative value means no default deadline.
	DefaultTimeout time.Duration
	// MaxMessageBytes caps sent and received messages; zero means 16 MiB,
	// the servers' default.
	MaxMessageBytes int
	// DialOptions are appended to the ones this package builds.
	DialOptions []grpc.DialOption
}

const (
	defaultTimeout         = 30 * time.Second
	defaultMaxMessageBytes = 16 * 1024 * 1024
)

// Conn is one channel shared by the Router, Embedding and health clients.
type Conn struct {
	cc *grpc.ClientConn
}

// Dial opens a channel for cfg. Like grpc.Dial it does not wait for the
// server: the first call reports an unreachable one.
func Dial(cfg Config) (*Conn, error) {
	if cfg.Target == "" {
		return nil, fmt.Errorf("sekhaclient: Config.Target is empty")
	}
	transport, err := transportOption(cfg)
	if err != nil {
		return nil, err
	}
	maxBytes := cfg.MaxMessageBytes
	if maxBytes == 0 {
		maxBytes = defaultMaxMessageBytes
	}
	timeout := cfg.DefaultTimeout
	if timeout == 0 {
		timeout = defaultTimeout
	}
	calls := callDefaults{apiKey: cfg.APIKey, timeout: timeout}
	options := []grpc.DialOption{
		transport,
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(maxBytes),
			grpc.MaxCallSendMsgSize(maxBytes),
		),
		grpc.WithChainUnaryInterceptor(calls.unary),
		grpc.WithChainStreamInterceptor(calls.stream),
	}
	cc, err := grpc.Dial(cfg.Target, append(options, cfg.DialOptions...)...)
	if err != nil {
		return nil, fmt.Errorf("sekhaclient: dial %s: %w", cfg.Target, err)
	}
	return &Conn{cc: cc}, nil
}

// Router is the generated client of sekha.router.v1.RouterService.
func (c *Conn) Router() routerv1.RouterServiceClient {
	return routerv1.NewRouterServiceClient(c.cc)
}

// Embedding is the generated client of sekha.embedding.v1.EmbeddingService.
func (c *Conn) Embedding() embeddingv1.EmbeddingServiceClient {
	return embeddingv1.NewEmbeddingServiceClient(c.cc)
}

// Health returns the serving status name (SERVING, NOT_SERVING, ...) of
// service on the standard gRPC health service; "" asks about the server.
func (c *Conn) Health(ctx context.Context, service string) (string, error) {
	reply, err := healthpb.NewHealthClient(c.cc).Check(ctx, &healthpb.HealthCheckRequest{Service: service})
	if err != nil {
		return "", err
	}
	return reply.GetStatus().String(), nil
}

// ClientConn exposes the channel, e.g. for other generated stubs.
func (c *Conn) ClientConn() *grpc.ClientConn { return c.cc }

// Close closes the channel; calls in flight fail with CANCELED.
func (c *Conn) Close() error { return c.cc.Close() }

// transportOption picks plaintext or TLS. WithInsecure is the plaintext
// option of the grpc-go this builds against (Debian's 1.33, which predates
// credentials/insecure); newer grpc-go keeps it, deprecated.
func transportOption(cfg Config) (grpc.DialOption, error) {
	secure := cfg.TLS || cfg.RootCertificates != "" || cfg.ClientCertificate != "" || cfg.ClientKey != ""
	if !secure {
		return grpc.WithInsecure(), nil
	}
	config := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.RootCertificates != "" {
		pem, err := os.ReadFile(cfg.RootCertificates)
		if err != nil {
			return nil, fmt.Errorf("sekhaclient: root certificates: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("sekhaclient: root certificates: no PEM certificate in %s", cfg.RootCertificates)
		}
		config.RootCAs = pool
	}
	if (cfg.ClientCertificate == "") != (cfg.ClientKey == "") {
		return nil, fmt.Errorf("sekhaclient: mutual TLS needs both ClientCertificate and ClientKey")
	}
	if cfg.ClientCertificate != "" {
		pair, err := tls.LoadX509KeyPair(cfg.ClientCertificate, cfg.ClientKey)
		if err != nil {
			return nil, fmt.Errorf("sekhaclient: client certificate: %w", err)
		}
		config.Certificates = []tls.Certificate{pair}
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(config)), nil
}

// callDefaults adds what every call carries: the API key and, when the
// caller's context has no deadline, the default one.
type callDefaults struct {
	apiKey  string
	timeout time.Duration
}

func (d callDefaults) prepare(ctx context.Context) (context.Context, context.CancelFunc) {
	if d.apiKey != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+d.apiKey)
	}
	if _, has := ctx.Deadline(); has || d.timeout < 0 {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, d.timeout)
}

func (d callDefaults) unary(
	ctx context.Context, method string, req, reply interface{},
	cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption,
) error {
	ctx, cancel := d.prepare(ctx)
	defer cancel()
	return invoker(ctx, method, req, reply, cc, opts...)
}

func (d callDefaults) stream(
	ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string,
	streamer grpc.Streamer, opts ...grpc.CallOption,
) (grpc.ClientStream, error) {
	ctx, cancel := d.prepare(ctx)
	stream, err := streamer(ctx, desc, cc, method, opts...)
	if err != nil {
		cancel()
		return nil, err
	}
	return &cancelOnEnd{ClientStream: stream, cancel: cancel}, nil
}

// cancelOnEnd releases the default deadline's timer once the stream ends
// (io.EOF or an error) instead of when the timer fires.
type cancelOnEnd struct {
	grpc.ClientStream
	cancel context.CancelFunc
}

func (s *cancelOnEnd) RecvMsg(m interface{}) error {
	err := s.ClientStream.RecvMsg(m)
	if err != nil {
		s.cancel()
	}
	return err
}

// CollectStream reads a StreamChat stream to its end and returns the
// concatenated delta text and the summary. A stream that ends without a
// summary is an error: the server always sends one after a success.
func CollectStream(stream routerv1.RouterService_StreamChatClient) (string, int, *routerv1.ChatSummary, error) {
	var text []byte
	deltas := 0
	var summary *routerv1.ChatSummary
	for {
		message, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return string(text), deltas, summary, err
		}
		switch event := message.GetEvent().(type) {
		case *routerv1.StreamChatResponse_Delta:
			if summary != nil {
				return string(text), deltas, summary, fmt.Errorf("sekhaclient: delta after the summary")
			}
			deltas++
			text = append(text, event.Delta.GetText()...)
		case *routerv1.StreamChatResponse_Summary:
			if summary != nil {
				return string(text), deltas, summary, fmt.Errorf("sekhaclient: second summary")
			}
			summary = event.Summary
		}
	}
	if summary == nil {
		return string(text), deltas, nil, fmt.Errorf("sekhaclient: stream ended without a summary")
	}
	return string(text), deltas, summary, nil
}

// UserText is a user message with one text part.
func UserText(text string) *routerv1.ChatMessage {
	return TextMessage(routerv1.Role_ROLE_USER, text)
}

// TextMessage is a message of role with one text part.
func TextMessage(role routerv1.Role, text string) *routerv1.ChatMessage {
	return &routerv1.ChatMessage{
		Role:  role,
		Parts: []*routerv1.ContentPart{{Kind: &routerv1.ContentPart_Text{Text: text}}},
	}
}
