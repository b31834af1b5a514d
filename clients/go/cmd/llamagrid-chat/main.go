// Command llamagrid-chat streams a llamagrid worker's answer to one question to stdout, then
// prints why generation ended.
//
//	go run ./cmd/llamagrid-chat -addr 127.0.0.1:50051 "Name three primary colors."
//
// The address defaults to $LLAMAGRID_WORKER_ADDR, then 127.0.0.1:50051.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/llamagrid/llamagrid/clients/go/llamagrid"
	pb "github.com/llamagrid/llamagrid/clients/go/llamagridv1"
	"google.golang.org/protobuf/proto"
)

func main() {
	defaultAddr := os.Getenv("LLAMAGRID_WORKER_ADDR")
	if defaultAddr == "" {
		defaultAddr = "127.0.0.1:50051"
	}
	addr := flag.String("addr", defaultAddr, "worker address host:port")
	system := flag.String("system", "You are a terse assistant.", "system prompt")
	maxTokens := flag.Uint("max-tokens", 128, "most tokens to generate")
	temperature := flag.Float64("temperature", 0, "sampling temperature (0 is greedy)")
	timeout := flag.Duration("timeout", 2*time.Minute, "deadline of the whole request")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: llamagrid-chat [flags] question...\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	question := strings.Join(flag.Args(), " ")
	if question == "" {
		flag.Usage()
		os.Exit(2)
	}
	log.SetFlags(0)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()

	client, err := llamagrid.Dial(ctx, *addr)
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	req := &pb.GenerateRequest{
		Input: llamagrid.Chat(
			llamagrid.Message("system", *system),
			llamagrid.Message("user", question),
		),
		Sampling: &pb.SamplingParams{
			MaxTokens:   proto.Uint32(uint32(*maxTokens)),
			Temperature: proto.Float32(float32(*temperature)),
		},
	}
	for resp, err := range client.Generate(ctx, req) {
		if err != nil {
			log.Fatalf("\n%v", err)
		}
		if final := resp.GetFinal(); final != nil {
			u := final.GetUsage()
			fmt.Printf("\n[finish: %s, prompt tokens: %d, completion tokens: %d]\n",
				final.GetFinishReason(), u.GetPromptTokens(), u.GetCompletionTokens())
			continue
		}
		fmt.Print(resp.GetChunk().GetText())
	}
}
