package rules

import (
	"os"
	"strings"
	"testing"

	"github.com/ftpgate/ftpgate/internal/netnstest"
)

// TestCheckRuleset loads real rulesets into a throwaway namespace and
// checks which chains the check names.
func TestCheckRuleset(t *testing.T) {
	for _, tt := range []struct {
		name, ruleset string
		want          []string // chains named, "" for none
	}{
		{"line present", `table inet filter {
			chain forward { type filter hook forward priority filter; policy drop;
				ct state established,related accept
				ct mark & 0x01000000 == 0x01000000 accept; }
			chain input { type filter hook input priority filter; policy drop;
				iif lo accept
				ct mark & 0x01000000 == 0x01000000 accept; }
		}`, nil},
		{"line missing", `table inet filter {
			chain forward { type filter hook forward priority filter; policy drop;
				ct state established,related accept
				tcp dport 21 accept; }
			chain input { type filter hook input priority filter; policy accept; }
		}`, []string{"inet filter forward"}},
		{"line after an unconditional drop", `table ip fw {
			chain forwarding { type filter hook forward priority 0; policy accept;
				ct state established accept
				counter drop
				ct mark & 0x01000000 == 0x01000000 accept; }
		}`, []string{"ip fw forwarding"}},
		{"line in a jumped-to chain", `table inet filter {
			chain allow { ct mark & 0x01000000 == 0x01000000 accept; }
			chain forward { type filter hook forward priority filter; policy drop;
				jump allow; }
		}`, nil},
		{"another mark", `table inet filter {
			chain forward { type filter hook forward priority filter; policy drop;
				ct mark & 0x00000010 == 0x00000010 accept; }
		}`, []string{"inet filter forward"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ns := netnstest.New(t)
			netnstest.Nft(t, ns, "-f", writeTemp(t, tt.ruleset))
			n := openTest(t, ns)
			problems, err := n.CheckRuleset()
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, p := range problems {
				got = append(got, p.Family+" "+p.Table+" "+p.Chain)
				if !strings.Contains(p.String(), "has no rule accepting the ftpgate mark") {
					t.Errorf("message %q", p.String())
				}
			}
			if strings.Join(got, ",") != strings.Join(tt.want, ",") {
				t.Errorf("named %v, want %v", got, tt.want)
			}
		})
	}
}

func writeTemp(t *testing.T, content string) string {
	t.Helper()
	p := t.TempDir() + "/ruleset.nft"
	if err := os.WriteFile(p, []byte(content+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
