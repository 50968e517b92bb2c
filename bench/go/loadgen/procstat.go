package main

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// CPUTimes is a process's user and system time in clock ticks.
type CPUTimes struct {
	Utime int64 `json:"utime"`
	Stime int64 `json:"stime"`
}

// MachineTimes is one /proc/stat cpu line: busy and total ticks.
type MachineTimes struct {
	Busy  int64 `json:"busy"`
	Total int64 `json:"total"`
}

// Snapshot is everything sampled at one edge of the measurement window.
type Snapshot struct {
	Groups  map[string]CPUTimes     `json:"groups"`
	Machine map[string]MachineTimes `json:"machine"`
}

// readProcTimes returns utime+stime of a whole process (all its threads).
func readProcTimes(pid int) (CPUTimes, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return CPUTimes{}, err
	}
	// The command name may contain spaces and parentheses: fields start after the last ')'.
	end := bytes.LastIndexByte(data, ')')
	if end < 0 {
		return CPUTimes{}, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	fields := strings.Fields(string(data[end+1:]))
	if len(fields) < 13 {
		return CPUTimes{}, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	// fields[0] is field 3 (state); utime and stime are fields 14 and 15.
	utime, err1 := strconv.ParseInt(fields[11], 10, 64)
	stime, err2 := strconv.ParseInt(fields[12], 10, 64)
	if err1 != nil || err2 != nil {
		return CPUTimes{}, fmt.Errorf("/proc/%d/stat: bad times", pid)
	}
	return CPUTimes{Utime: utime, Stime: stime}, nil
}

// readMachine returns busy/total ticks for "cpu" (all) and each "cpuN".
func readMachine() map[string]MachineTimes {
	out := map[string]MachineTimes{}
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return out
	}
	for _, line := range strings.Split(string(data), "\n") {
		if !strings.HasPrefix(line, "cpu") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 9 {
			continue
		}
		v := make([]int64, 8)
		for i := range v {
			v[i], _ = strconv.ParseInt(f[i+1], 10, 64)
		}
		// user nice system idle iowait irq softirq steal
		busy := v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
		out[f[0]] = MachineTimes{Busy: busy, Total: busy + v[3] + v[4]}
	}
	return out
}

// PIDGroups maps a group name (proxy, backend, ...) to its processes.
type PIDGroups map[string][]int

// parsePIDs reads "name=pid,name=pid"; a name may repeat.
func parsePIDs(spec string) (PIDGroups, error) {
	groups := PIDGroups{}
	if spec == "" {
		return groups, nil
	}
	for _, item := range strings.Split(spec, ",") {
		name, value, ok := strings.Cut(item, "=")
		pid, err := strconv.Atoi(value)
		if !ok || err != nil || name == "" {
			return nil, fmt.Errorf("-pids: expected name=pid, got %q", item)
		}
		groups[name] = append(groups[name], pid)
	}
	return groups, nil
}

// sample reads the CPU times of every group (plus this process as "loadgen")
// and of the machine. A vanished process counts as zero.
func sample(groups PIDGroups) Snapshot {
	snap := Snapshot{Groups: map[string]CPUTimes{}, Machine: readMachine()}
	all := PIDGroups{"loadgen": {os.Getpid()}}
	for name, pids := range groups {
		all[name] = pids
	}
	for name, pids := range all {
		var sum CPUTimes
		for _, pid := range pids {
			t, err := readProcTimes(pid)
			if err == nil {
				sum.Utime += t.Utime
				sum.Stime += t.Stime
			}
		}
		snap.Groups[name] = sum
	}
	return snap
}
