// Command echo is the benchmark backend: a WebSocket echo server that also
// answers plain HTTP GETs with a short body, so one listener serves every test.
//
// It prints its bound address on the first line of stdout, which lets the
// harness start it on port 0.
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

var hello = []byte("Hello, World!")

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	flag.Parse()

	upgrader := websocket.Upgrader{
		ReadBufferSize: 32 * 1024,
		// A shared pool keeps 10,000 idle connections from each pinning a
		// 64 KiB write buffer, while big messages are still copied in one go.
		WriteBufferPool: &sync.Pool{},
		WriteBufferSize: 64 * 1024,
		CheckOrigin:     func(*http.Request) bool { return true },
	}

	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if websocket.IsWebSocketUpgrade(r) {
			conn, err := upgrader.Upgrade(w, r, nil)
			if err != nil {
				return
			}
			echo(conn)
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Content-Length", fmt.Sprint(len(hello)))
		_, _ = w.Write(hello)
	})

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatalf("echo: cannot listen on %s: %v", *addr, err)
	}
	fmt.Println(ln.Addr().String())
	_ = os.Stdout.Sync()
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 30 * time.Second}
	log.Fatal(srv.Serve(ln))
}

// echo sends every message back with its type, streaming it through the
// connection's writer so large messages cost no extra copy.
func echo(conn *websocket.Conn) {
	defer conn.Close()
	for {
		kind, r, err := conn.NextReader()
		if err != nil {
			return
		}
		w, err := conn.NextWriter(kind)
		if err != nil {
			return
		}
		if _, err := io.Copy(w, r); err != nil {
			return
		}
		if err := w.Close(); err != nil {
			return
		}
	}
}
