package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/gorilla/websocket"
)

// client does one request/response exchange per call over a kept-open connection.
type client interface {
	roundTrip() (payload int, err error)
	close()
}

// wsClient sends one message and waits for its echo.
type wsClient struct {
	conn    *websocket.Conn
	kind    int
	payload []byte
	buf     []byte
}

func dialWS(target string, local net.Addr, bufSize int) (*websocket.Conn, error) {
	dialer := websocket.Dialer{
		ReadBufferSize:   bufSize,
		WriteBufferSize:  bufSize,
		HandshakeTimeout: 30 * time.Second,
		NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			d := net.Dialer{LocalAddr: local, Timeout: 30 * time.Second}
			return d.DialContext(ctx, network, addr)
		},
	}
	conn, resp, err := dialer.Dial(target, nil)
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("handshake: HTTP %d", resp.StatusCode)
		}
		return nil, err
	}
	return conn, nil
}

func newWSClient(target string, size int, binary bool) (client, error) {
	bufSize := 4096
	if size > bufSize {
		bufSize = size + 16
	}
	conn, err := dialWS(target, nil, bufSize)
	if err != nil {
		return nil, err
	}
	c := &wsClient{conn: conn, kind: websocket.TextMessage, payload: make([]byte, size), buf: make([]byte, size+1)}
	for i := range c.payload {
		c.payload[i] = 'a' + byte(i%26)
	}
	if binary {
		c.kind = websocket.BinaryMessage
		for i := range c.payload {
			c.payload[i] = byte(i * 7)
		}
	}
	return c, nil
}

func (c *wsClient) roundTrip() (int, error) {
	if err := c.conn.WriteMessage(c.kind, c.payload); err != nil {
		return 0, err
	}
	kind, r, err := c.conn.NextReader()
	if err != nil {
		return 0, err
	}
	// The buffer is one byte longer than the message, so a correct echo ends early.
	n, err := io.ReadFull(r, c.buf)
	if err == nil {
		return 0, errors.New("echo longer than the message")
	}
	if err != io.ErrUnexpectedEOF {
		return 0, err
	}
	if kind != c.kind || !bytes.Equal(c.buf[:n], c.payload) {
		return 0, errors.New("echo differs from the message")
	}
	return n, nil
}

func (c *wsClient) close() { _ = c.conn.Close() }

// httpClient sends GET requests over one keep-alive connection.
type httpClient struct {
	addr    string
	request []byte
	conn    net.Conn
	reader  *bufio.Reader
}

func newHTTPClient(target string) (client, error) {
	u, err := url.Parse(target)
	if err != nil {
		return nil, err
	}
	path := u.RequestURI()
	req := fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: bench-loadgen\r\nAccept: */*\r\n\r\n", path, u.Host)
	c := &httpClient{addr: u.Host, request: []byte(req)}
	return c, c.connect()
}

func (c *httpClient) connect() error {
	conn, err := net.DialTimeout("tcp", c.addr, 30*time.Second)
	if err != nil {
		return err
	}
	c.conn = conn
	c.reader = bufio.NewReaderSize(conn, 16*1024)
	return nil
}

func (c *httpClient) roundTrip() (int, error) {
	if _, err := c.conn.Write(c.request); err != nil {
		return 0, err
	}
	resp, err := http.ReadResponse(c.reader, nil)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	if resp.Close {
		// Not an error, but the test is about keep-alive: reconnect and go on.
		_ = c.conn.Close()
		return int(n), c.connect()
	}
	return int(n), nil
}

func (c *httpClient) close() { _ = c.conn.Close() }
