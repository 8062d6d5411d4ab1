package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
)

// Row is one line of the benchmark's results file, written by bench.sh:
// a gateway, a mode, the load client's result and ftpgate's cost.
type Row struct {
	Gateway string  `json:"gateway"` // "kernel" or "ftpgate"
	Name    string  `json:"name"`    // e.g. "PASV v4"
	CPU     float64 `json:"cpu_s"`   // ftpgate CPU seconds during this mode
	RSSKiB  int64   `json:"peak_rss_kib"`
	Result  Result  `json:"result"`
}

// cmdReport prints the side-by-side table of a results file.
func cmdReport(args []string, stdout io.Writer) error {
	if len(args) != 1 {
		return fmt.Errorf("usage: ftpload report RESULTS.jsonl")
	}
	f, err := os.Open(args[0])
	if err != nil {
		return err
	}
	defer f.Close()
	rows := map[string]map[string]Row{} // name -> gateway -> row
	var order []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r Row
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return fmt.Errorf("%s: %w", args[0], err)
		}
		if rows[r.Name] == nil {
			rows[r.Name] = map[string]Row{}
			order = append(order, r.Name)
		}
		rows[r.Name][r.Gateway] = r
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "mode\tgateway\twanted\tok\tfailed\tp50 ms\tp99 ms\tmax ms\tslow>900ms\ttransfers/s\tlogin max ms\tftpgate cpu s\tftpgate peak rss MiB\tp99 ratio\ttransfers/s ratio\t")
	for _, name := range order {
		k, haveK := rows[name]["kernel"]
		for _, gw := range []string{"kernel", "ftpgate"} {
			r, ok := rows[name][gw]
			if !ok {
				continue
			}
			cpu, rss, ratio, tput := "-", "-", "", ""
			if gw == "ftpgate" {
				cpu = fmt.Sprintf("%.2f", r.CPU)
				rss = fmt.Sprintf("%.1f", float64(r.RSSKiB)/1024)
				if haveK && k.Result.SetupP99 > 0 && k.Result.PerSecond > 0 {
					ratio = fmt.Sprintf("%.2f", r.Result.SetupP99/k.Result.SetupP99)
					tput = fmt.Sprintf("%.2f", r.Result.PerSecond/k.Result.PerSecond)
				}
			}
			res := r.Result
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%.3f\t%.3f\t%.1f\t%d\t%.0f\t%.0f\t%s\t%s\t%s\t%s\t\n",
				name, gw, res.Wanted, res.Succeeded, res.Failed, res.SetupP50, res.SetupP99, res.SetupMax,
				res.Slow, res.PerSecond, res.LoginMax, cpu, rss, ratio, tput)
		}
	}
	return tw.Flush()
}
