package conntrack

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// logBuffer is a JSON log in memory.
type logBuffer struct{ bytes.Buffer }

func (b *logBuffer) lines(msg string) []string {
	var out []string
	for _, l := range strings.Split(b.String(), "\n") {
		if strings.Contains(l, `"msg":"`+msg+`"`) {
			out = append(out, l)
		}
	}
	return out
}

func confirmHarness(t *testing.T) (*harness, *logBuffer) {
	var buf logBuffer
	h := newHarness(t, Config{ConfirmAdmitted: true, ReportWindow: 2 * time.Second,
		Logger: slog.New(slog.NewJSONHandler(&buf, nil))})
	passiveAnnounced(t, h, true)
	return h, &buf
}

// TestAdmittedConfirmed: a used pinhole whose connection the ruleset let
// through closes as started, when the confirmation comes.
func TestAdmittedConfirmed(t *testing.T) {
	h, log := confirmHarness(t)
	syn := dataSYN(t, "192.0.2.10:50000", announced)
	h.tr.UsedReport(syn)
	if n := len(log.lines("channel closed")); n != 0 {
		t.Fatalf("closed before the ruleset's report: %v", log.lines("channel closed"))
	}
	h.tr.AdmittedReport(syn)
	got := log.lines("channel closed")
	if len(got) != 1 || !strings.Contains(got[0], `"reason":"data connection started"`) {
		t.Fatalf("close lines %v", got)
	}
	if st := h.tr.Stats(); st.DataAdmitted != 1 || st.AdmittedDropped != 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestAdmittedButDropped: a used pinhole whose connection never shows
// past the admin's chains is logged and counted as dropped, not as
// started.
func TestAdmittedButDropped(t *testing.T) {
	h, log := confirmHarness(t)
	h.tr.UsedReport(dataSYN(t, "192.0.2.10:50000", announced))
	h.tr.Expire(h.ts.Add(time.Second))
	if n := len(log.lines("channel closed")); n != 0 {
		t.Fatalf("decided before the wait was over: %v", log.lines("channel closed"))
	}
	h.tr.Expire(h.ts.Add(3 * time.Second))
	got := log.lines("channel closed")
	if len(got) != 1 || !strings.Contains(got[0], `"reason":"admitted but dropped by the ruleset"`) || !strings.Contains(got[0], `"level":"WARN"`) {
		t.Fatalf("close lines %v", got)
	}
	if st := h.tr.Stats(); st.AdmittedDropped != 1 || st.DataAdmitted != 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestCloseLoggedWhenItHappens: a close for a session reason is logged at
// once, before the session's end line, with the time it happened; a
// timeout says when the pinhole expired.
func TestCloseLoggedWhenItHappens(t *testing.T) {
	h, log := confirmHarness(t)
	h.tr.CloseAll("daemon stopping")
	text := log.String()
	closed, ended := strings.Index(text, `"msg":"channel closed"`), strings.Index(text, `"msg":"session end"`)
	if closed < 0 || ended < 0 || closed > ended {
		t.Fatalf("want the close line before the session end line:\n%s", text)
	}
	if !strings.Contains(log.lines("channel closed")[0], `"at":"`) {
		t.Errorf("close line without its time: %s", log.lines("channel closed")[0])
	}

	h2, log2 := confirmHarness(t)
	exp := h2.ts.Add(time.Minute) // the default pinhole timeout
	h2.tr.Expire(exp.Add(900 * time.Millisecond))
	got := log2.lines("channel closed")
	if len(got) != 1 || !strings.Contains(got[0], `"reason":"timeout"`) || !strings.Contains(got[0], `"at":"`+exp.UTC().Format(time.RFC3339Nano)) {
		t.Errorf("timeout line %v, want at=%s", got, exp.UTC().Format(time.RFC3339Nano))
	}
}
