// Command pmem-webhook is the mutating admission webhook that moves the heap
// of annotated pods to persistent memory.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/go-logr/logr"
	"k8s.io/client-go/kubernetes"

	"github.com/pmem-webhook/pmem-webhook/certs/bootstrap"
	"github.com/pmem-webhook/pmem-webhook/config"
	"github.com/pmem-webhook/pmem-webhook/server"
	"github.com/pmem-webhook/pmem-webhook/webhook"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "pmem-webhook:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("pmem-webhook", flag.ContinueOnError)
	serverFlags := server.Register(fs)
	inject := config.Register(fs)
	selfSigned := bootstrap.Register(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	cfg, err := inject.Load()
	if err != nil {
		return err
	}
	o := serverFlags.Options()
	o.Config = cfg
	boot, err := selfSigned.Load()
	if err != nil {
		return err
	}

	// Structured JSON logs through the standard library; logr is what
	// controller-runtime's pieces expect.
	handler := slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.Level(-serverFlags.LogLevel())})
	o.Log = logr.FromSlogHandler(handler)
	o.Log.Info("starting", "config", config.String(cfg))

	if serverFlags.CheckClaims() {
		// Fail soft: a webhook that cannot reach the API still injects;
		// claim pods then get a warning instead of a check.
		if restCfg, err := selfSigned.RESTConfig(); err != nil {
			o.Log.Error(err, "claim checks disabled: no API client configuration (pass --check-claims=false to silence this)")
		} else if clients, err := kubernetes.NewForConfig(restCfg); err != nil {
			o.Log.Error(err, "claim checks disabled")
		} else {
			o.Claims = webhook.APIClaimLookup{Client: clients}
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if boot != nil {
		// The server waits for the cert files the bootstrapper writes into
		// --cert-dir and reloads them when it rotates.
		restCfg, err := selfSigned.RESTConfig()
		if err != nil {
			return err
		}
		boot.CertDir, boot.Log = o.CertDir, o.Log
		b, err := bootstrap.New(restCfg, *boot)
		if err != nil {
			return err
		}
		done := make(chan struct{})
		go func() { defer close(done); _ = b.Run(ctx) }()
		defer func() { stop(); <-done }()
	}
	return server.Run(ctx, o)
}
