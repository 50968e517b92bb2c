// Command loadgen drives the proxy benchmark: WebSocket ping-pong and HTTP
// keep-alive GETs at a fixed or unlimited rate, and idle WebSocket connections.
//
// For the load modes it samples the CPU time of the listed processes and of the
// machine exactly at the edges of its measurement window, so per-message CPU
// and outside load come from the same instants as the message count. It prints
// one JSON object on stdout.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"
)

type options struct {
	mode    string
	url     string
	conns   int
	size    int
	binary  bool
	rate    float64
	warmup  time.Duration
	window  time.Duration
	pids    PIDGroups
	sources []string
	limit   time.Duration
}

func main() {
	var o options
	var pids, sources string
	flag.StringVar(&o.mode, "mode", "ws", "ws | http | idle")
	flag.StringVar(&o.url, "url", "", "ws://host:port/path or http://host:port/path")
	flag.IntVar(&o.conns, "c", 100, "connections")
	flag.IntVar(&o.size, "size", 64, "WebSocket message size in bytes")
	flag.BoolVar(&o.binary, "binary", false, "send binary messages instead of text")
	flag.Float64Var(&o.rate, "rate", 0, "total messages per second (0 = as fast as the echoes come back)")
	flag.DurationVar(&o.warmup, "warmup", time.Second, "load before the measurement window")
	flag.DurationVar(&o.window, "d", 3*time.Second, "measurement window")
	flag.StringVar(&pids, "pids", "", "processes to account, name=pid[,name=pid...]")
	flag.StringVar(&sources, "src", "127.0.0.1", "idle mode: comma-separated local addresses to spread connections over")
	flag.DurationVar(&o.limit, "limit", 60*time.Second, "hard time limit for the whole run")
	flag.Parse()

	var err error
	if o.pids, err = parsePIDs(pids); err != nil {
		fail(err.Error())
	}
	if o.url == "" || o.conns < 1 || o.size < 1 || o.rate < 0 {
		fail("-url is required; -c and -size must be positive; -rate must not be negative")
	}
	o.sources = splitList(sources)

	// Every run ends by itself, whatever the target does.
	time.AfterFunc(o.limit, func() {
		fmt.Fprintln(os.Stderr, "loadgen: hard time limit reached")
		os.Exit(3)
	})

	var result any
	switch o.mode {
	case "ws":
		result = runLoad(o, func() (client, error) { return newWSClient(o.url, o.size, o.binary) })
	case "http":
		result = runLoad(o, func() (client, error) { return newHTTPClient(o.url) })
	case "idle":
		result = runIdle(o)
	default:
		fail("-mode must be ws, http or idle")
	}
	if err := json.NewEncoder(os.Stdout).Encode(result); err != nil {
		fail(err.Error())
	}
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, "loadgen:", msg)
	os.Exit(2)
}

func splitList(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ',' })
}
