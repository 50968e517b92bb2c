package main

import (
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

const (
	warming = iota
	measuring
	finished
)

// LoadResult is what a ws or http run reports.
type LoadResult struct {
	Mode        string   `json:"mode"`
	Conns       int      `json:"conns"`
	Connected   int      `json:"connected"`
	OfferedRate float64  `json:"offered_rate"`
	Messages    int      `json:"messages"`
	Bytes       int64    `json:"bytes"`
	WindowS     float64  `json:"window_s"`
	Errors      int      `json:"errors"`
	FirstError  string   `json:"first_error,omitempty"`
	P50us       float64  `json:"p50_us"`
	P99us       float64  `json:"p99_us"`
	MaxUs       float64  `json:"max_us"`
	ClkTck      int      `json:"clk_tck"`
	Start       Snapshot `json:"start"`
	End         Snapshot `json:"end"`
}

// tally is one connection's record; only its own goroutine writes it.
type tally struct {
	latencies []time.Duration
	messages  int
	bytes     int64
	err       error
}

// pacer spaces one connection's sends so that all of them add up to the rate.
type pacer struct {
	interval time.Duration
	next     time.Time
}

func (p *pacer) wait() {
	if p.interval == 0 {
		return
	}
	now := time.Now()
	if d := p.next.Sub(now); d > 0 {
		time.Sleep(d)
	} else if -d > p.interval {
		// Fell behind (slow echo): do not burst to catch up.
		p.next = now
	}
	p.next = p.next.Add(p.interval)
}

func connectAll(n int, dial func() (client, error)) ([]client, int, error) {
	clients := make([]client, n)
	var failed atomic.Int32
	var firstErr atomic.Value
	var wg sync.WaitGroup
	slots := make(chan struct{}, 50)
	for i := range clients {
		wg.Add(1)
		slots <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-slots }()
			c, err := dial()
			if err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err)
				return
			}
			clients[i] = c
		}(i)
	}
	wg.Wait()
	var err error
	if v := firstErr.Load(); v != nil {
		err = v.(error)
	}
	var ok []client
	for _, c := range clients {
		if c != nil {
			ok = append(ok, c)
		}
	}
	return ok, int(failed.Load()), err
}

func runLoad(o options, dial func() (client, error)) LoadResult {
	res := LoadResult{Mode: o.mode, Conns: o.conns, OfferedRate: o.rate, ClkTck: 100}
	clients, failed, err := connectAll(o.conns, dial)
	res.Connected = len(clients)
	res.Errors = failed
	if err != nil {
		res.FirstError = "connect: " + err.Error()
	}
	if len(clients) == 0 {
		return res
	}

	var phase atomic.Int32
	tallies := make([]tally, len(clients))
	var interval time.Duration
	if o.rate > 0 {
		interval = time.Duration(float64(time.Second) * float64(len(clients)) / o.rate)
	}
	begin := time.Now()
	var wg sync.WaitGroup
	for i, c := range clients {
		wg.Add(1)
		go func(i int, c client) {
			defer wg.Done()
			t := &tallies[i]
			p := pacer{interval: interval, next: begin.Add(interval * time.Duration(i) / time.Duration(len(clients)))}
			for {
				p.wait()
				if phase.Load() == finished {
					return
				}
				sent := time.Now()
				n, err := c.roundTrip()
				if err != nil {
					if phase.Load() != finished {
						t.err = err
					}
					return
				}
				if phase.Load() == measuring {
					t.latencies = append(t.latencies, time.Since(sent))
					t.messages++
					t.bytes += int64(n)
				}
			}
		}(i, c)
	}

	time.Sleep(o.warmup)
	res.Start = sample(o.pids)
	start := time.Now()
	phase.Store(measuring)
	time.Sleep(o.window)
	phase.Store(finished)
	res.WindowS = time.Since(start).Seconds()
	res.End = sample(o.pids)

	// Let in-flight exchanges finish, then cut whatever is still blocked.
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
	}
	for _, c := range clients {
		c.close()
	}
	<-done

	var all []time.Duration
	for _, t := range tallies {
		all = append(all, t.latencies...)
		res.Messages += t.messages
		res.Bytes += t.bytes
		if t.err != nil {
			res.Errors++
			if res.FirstError == "" {
				res.FirstError = t.err.Error()
			}
		}
	}
	if len(all) > 0 {
		sort.Slice(all, func(a, b int) bool { return all[a] < all[b] })
		res.P50us = micros(percentile(all, 0.50))
		res.P99us = micros(percentile(all, 0.99))
		res.MaxUs = micros(all[len(all)-1])
	}
	return res
}

// percentile uses the nearest-rank method on sorted samples.
func percentile(sorted []time.Duration, q float64) time.Duration {
	rank := int(q*float64(len(sorted))+0.5) - 1
	if rank < 0 {
		rank = 0
	}
	if rank >= len(sorted) {
		rank = len(sorted) - 1
	}
	return sorted[rank]
}

func micros(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 }
