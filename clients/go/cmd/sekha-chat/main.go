// Command sekha-chat streams one chat completion from a Sekha router: the
// smallest complete use of the Go client.
//
//	sekha-chat -target 127.0.0.1:50051 -api-key "$SEKHA_API_KEY" "Say hello."
//
// A rejected request prints the fields the router named; the exit status is
// 1 for any failure.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	routerv1 "sekha.dev/gateway/clients/go/sekha/router/v1"
	"sekha.dev/gateway/clients/go/sekhaclient"
)

func main() {
	target := flag.String("target", "127.0.0.1:50051", "router host:port")
	apiKey := flag.String("api-key", os.Getenv("SEKHA_API_KEY"), "API key (default $SEKHA_API_KEY)")
	timeout := flag.Duration("timeout", 60*time.Second, "deadline of the whole call")
	flag.Parse()
	prompt := strings.Join(flag.Args(), " ")
	if prompt == "" {
		fmt.Fprintln(os.Stderr, "usage: sekha-chat [flags] PROMPT")
		os.Exit(2)
	}
	if err := run(*target, *apiKey, *timeout, prompt); err != nil {
		fmt.Fprintln(os.Stderr, "sekha-chat:", err)
		if e, ok := sekhaclient.AsError(err); ok {
			for _, v := range e.Details.FieldViolations {
				fmt.Fprintf(os.Stderr, "  %s: %s\n", v.Field, v.Description)
			}
		}
		os.Exit(1)
	}
}

func run(target, apiKey string, timeout time.Duration, prompt string) error {
	conn, err := sekhaclient.Dial(sekhaclient.Config{Target: target, APIKey: apiKey})
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	stream, err := conn.Router().StreamChat(ctx, &routerv1.StreamChatRequest{
		Messages: []*routerv1.ChatMessage{sekhaclient.UserText(prompt)},
	})
	if err != nil {
		return err
	}
	for {
		message, err := stream.Recv()
		if err == io.EOF {
			return fmt.Errorf("the stream ended without its summary")
		}
		if err != nil {
			return err
		}
		if delta := message.GetDelta(); delta != nil {
			fmt.Print(delta.GetText()) // text as the model generates it
			continue
		}
		summary := message.GetSummary()
		chosen := summary.GetRouting().GetChosen()
		fmt.Println()
		fmt.Fprintf(os.Stderr, "[%s/%s, %d+%d tokens]\n", chosen.GetProviderId(), chosen.GetModel(),
			summary.GetUsage().GetInputTokens(), summary.GetUsage().GetOutputTokens())
		return nil
	}
}
