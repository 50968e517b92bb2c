package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// IdleResult is printed twice: once when every connection is open (the
// harness then measures the proxy), and once after the check on close.
type IdleResult struct {
	Phase      string  `json:"phase"`
	Open       int     `json:"open"`
	Errors     int     `json:"errors"`
	FirstError string  `json:"first_error,omitempty"`
	OpenS      float64 `json:"open_s"`
	Checked    int     `json:"checked,omitempty"`
	CheckedOK  int     `json:"checked_ok,omitempty"`
}

// runIdle opens o.conns WebSocket connections spread over the source
// addresses (each address has its own ephemeral port range), reports, holds
// them until stdin closes, then checks that a sample still echoes.
func runIdle(o options) IdleResult {
	conns := make([]*websocket.Conn, o.conns)
	var failed atomic.Int32
	var firstErr atomic.Value
	var wg sync.WaitGroup
	slots := make(chan struct{}, 64)
	began := time.Now()
	for i := range conns {
		wg.Add(1)
		slots <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-slots }()
			local := &net.TCPAddr{IP: net.ParseIP(o.sources[i%len(o.sources)])}
			c, err := dialWS(o.url, local, 1024)
			if err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
				return
			}
			conns[i] = c
		}(i)
	}
	wg.Wait()
	res := IdleResult{Phase: "open", Open: o.conns - int(failed.Load()), Errors: int(failed.Load()), OpenS: time.Since(began).Seconds()}
	if v := firstErr.Load(); v != nil {
		res.FirstError = v.(string)
	}
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		fail(err.Error())
	}

	// Hold until the harness has measured (it closes our stdin) or the limit hits.
	_, _ = io.Copy(io.Discard, os.Stdin)

	res.Phase = "closed"
	payload := []byte("still there?")
	for i, c := range conns {
		if c == nil || i%100 != 0 {
			continue
		}
		res.Checked++
		if c.WriteMessage(websocket.TextMessage, payload) != nil {
			continue
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, msg, err := c.ReadMessage(); err == nil && string(msg) == string(payload) {
			res.CheckedOK++
		}
	}
	for _, c := range conns {
		if c != nil {
			_ = c.Close()
		}
	}
	if res.Checked > res.CheckedOK {
		fmt.Fprintf(os.Stderr, "loadgen: %d of %d checked idle connections no longer echo\n", res.Checked-res.CheckedOK, res.Checked)
	}
	return res
}
