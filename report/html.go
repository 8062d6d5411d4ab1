package report

import (
	"cmp"
	"fmt"
	"html"
	"io"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/ftpgate/ftpgate/conntrack"
)

// The diagram's geometry: three lifelines, one row per event.
const (
	svgWidth  = 900
	xClient   = 120
	xFirewall = 450
	xServer   = 780
	headerH   = 58
)

// pageData is what one write of the report draws: a copy, so that drawing
// does not hold the lock the tracker's hooks take.
type pageData struct {
	opt   Options
	sum   summary
	order []*session
}

// snapshot copies what a page needs. The caller holds r.mu.
func (r *Report) snapshot() *pageData {
	p := &pageData{opt: r.opt, sum: r.sum, order: make([]*session, len(r.order))}
	p.sum.byMode, p.sum.byCommand, p.sum.refusedBy = maps.Clone(r.sum.byMode), maps.Clone(r.sum.byCommand), maps.Clone(r.sum.refusedBy)
	for i, s := range r.order {
		c := *s
		c.events = slices.Clone(s.events)
		p.order[i] = &c
	}
	return p
}

// WriteHTML writes the report: one page, no external resources.
func (r *Report) WriteHTML(w io.Writer) error {
	r.mu.Lock()
	p := r.snapshot()
	r.changed = false
	r.mu.Unlock()
	return p.write(w)
}

func (r *pageData) write(w io.Writer) error {
	var b strings.Builder
	title := cmp.Or(r.opt.Title, "ftpgate: FTP sessions")
	fmt.Fprintf(&b, `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>%s</title>
<style>%s</style></head><body>
<h1>%s</h1>
`, esc(title), css, esc(title))
	if r.opt.Source != "" {
		fmt.Fprintf(&b, "<p class=\"source\">%s</p>\n", esc(r.opt.Source))
	}
	b.WriteString(legend)
	r.writeSummary(&b)
	b.WriteString(defs)
	r.writeSessions(&b)
	fmt.Fprintf(&b, "<script>%s</script>\n</body></html>\n", script)
	_, err := io.WriteString(w, b.String())
	return err
}

func (r *pageData) writeSummary(b *strings.Builder) {
	s := &r.sum
	b.WriteString(`<section id="summary"><h2>Summary</h2><table class="counts">`)
	row := func(id, label string, n int) {
		fmt.Fprintf(b, `<tr><th>%s</th><td id="%s">%d</td></tr>`, esc(label), id, n)
	}
	row("n-sessions", "control sessions", s.sessions)
	row("n-channels", "data channels announced", s.byMode["active"]+s.byMode["passive"])
	row("n-passive", "… in passive mode (the client connects)", s.byMode["passive"])
	row("n-active", "… in active mode (the server connects back)", s.byMode["active"])
	row("n-opened", "pinholes opened", s.opened)
	row("n-refused", "announcements refused", s.refused)
	row("n-started", "data connections through a pinhole", s.started)
	row("n-dropped", "data connections the firewall dropped", s.dropped)
	row("n-unused", "pinholes closed unused", s.closedUnused)
	row("n-encrypted", "encrypted sessions (FTPS: nothing to read)", s.encrypted)
	b.WriteString("</table>")
	if len(s.byCommand) > 0 {
		b.WriteString(`<table class="counts" id="by-command"><tr><th>command</th><th>mode</th><th>channels</th></tr>`)
		for _, c := range slices.Sorted(maps.Keys(s.byCommand)) {
			mode := "active"
			if c == "PASV" || c == "EPSV" || c == "LPSV" {
				mode = "passive"
			}
			fmt.Fprintf(b, `<tr><td>%s</td><td class="%s">%s</td><td>%d</td></tr>`, esc(c), mode, mode, s.byCommand[c])
		}
		b.WriteString("</table>")
	}
	if len(s.refusedBy) > 0 {
		b.WriteString(`<table class="counts" id="refusals"><tr><th>refused because</th><th>times</th></tr>`)
		reasons := slices.Sorted(maps.Keys(s.refusedBy))
		slices.SortStableFunc(reasons, func(x, y string) int { return s.refusedBy[y] - s.refusedBy[x] })
		for _, reason := range reasons {
			fmt.Fprintf(b, `<tr><td class="reason">%s</td><td>%d</td></tr>`, esc(reason), s.refusedBy[reason])
		}
		b.WriteString("</table>")
	}
	if !s.first.IsZero() {
		fmt.Fprintf(b, `<p>From %s to %s (UTC).</p>`, s.first.UTC().Format("2006-01-02 15:04:05.000"), s.last.UTC().Format("15:04:05.000"))
	}
	if s.evicted > 0 {
		fmt.Fprintf(b, `<p class="note">The %d oldest sessions are counted above but not drawn (the report keeps %d).</p>`, s.evicted, r.opt.MaxSessions)
	}
	b.WriteString("</section>\n")
}

func (r *pageData) writeSessions(b *strings.Builder) {
	n := len(r.order)
	pages := max(1, (n+r.opt.PageSize-1)/r.opt.PageSize)
	order := r.order
	if r.opt.Live {
		order = slices.Clone(order) // the newest first: a class watches its latest transfers
		slices.Reverse(order)
	}
	fmt.Fprintf(b, `<section id="sessions" data-pages="%d"><h2>Sessions</h2>`, pages)
	b.WriteString(`<nav class="controls"><label>show <select id="filter"><option value="all">all sessions</option>` +
		`<option value="passive">passive mode</option><option value="active">active mode</option>` +
		`<option value="refused">with a refusal</option><option value="encrypted">encrypted</option></select></label>`)
	if pages > 1 {
		fmt.Fprintf(b, ` <button id="prev" type="button">previous</button> <span id="pageno">page 1 of %d</span> <button id="next" type="button">next</button>`, pages)
	}
	if r.opt.Live {
		b.WriteString(` <label><input type="checkbox" id="follow"> reload every 5 s</label> <span class="note">newest sessions first</span>`)
	}
	b.WriteString("</nav>\n")
	if n == 0 {
		b.WriteString(`<p class="note">No FTP control session was seen.</p>`)
	}
	for p := range pages {
		cls := "page"
		if p == 0 {
			cls += " current"
		}
		fmt.Fprintf(b, `<div class="%s" data-page="%d">`+"\n", cls, p+1)
		for _, s := range order[p*r.opt.PageSize : min(n, (p+1)*r.opt.PageSize)] {
			writeSession(b, s)
		}
		b.WriteString("</div>\n")
	}
	b.WriteString("</section>\n")
}

// mode names a session's data channels.
func (s *session) mode() string {
	switch {
	case s.active > 0 && s.passive > 0:
		return "both"
	case s.active > 0:
		return "active"
	case s.passive > 0:
		return "passive"
	}
	return "none"
}

func writeSession(b *strings.Builder, s *session) {
	evs := slices.Clone(s.events)
	slices.SortStableFunc(evs, func(x, y event) int {
		if c := x.time.Compare(y.time); c != 0 {
			return c
		}
		return x.seq - y.seq
	})
	start := s.start
	for _, e := range evs {
		if e.time.Before(start) {
			start = e.time
		}
	}
	mode := s.mode()
	modeText := map[string]string{"active": "active mode", "passive": "passive mode", "both": "active and passive mode", "none": "no data channel"}[mode]
	if s.enc != nil {
		modeText = "encrypted (FTPS)"
		if mode != "none" {
			modeText = map[string]string{"active": "active mode", "passive": "passive mode", "both": "active and passive mode"}[mode] + ", partly encrypted"
		}
	}
	fmt.Fprintf(b, `<details class="session mode-%s" id="session-%s" data-session="%s" data-mode="%s" data-refused="%d" data-encrypted="%t" open>`,
		mode, esc(s.id), esc(s.id), mode, s.refused, s.enc != nil)
	channels := s.active + s.passive
	fmt.Fprintf(b, `<summary><span class="badge">%s</span> session %s: client %s, server %s · %d data channel%s`,
		esc(modeText), esc(s.id), esc(s.client.String()), esc(s.server.String()), channels, plural(channels))
	if s.refused > 0 {
		fmt.Fprintf(b, `, <span class="refused">%d refused</span>`, s.refused)
	}
	fmt.Fprintf(b, ` · %s UTC`, start.UTC().Format("2006-01-02 15:04:05.000"))
	if s.ended {
		fmt.Fprintf(b, `, %s`, s.end.Sub(start).Round(time.Millisecond))
	}
	b.WriteString("</summary>\n")
	writeDiagram(b, s, evs, start)
	if s.more > 0 {
		fmt.Fprintf(b, `<p class="note">%d later events of this session are not drawn.</p>`, s.more)
	}
	b.WriteString("</details>\n")
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// writeDiagram draws a session's sequence diagram.
func writeDiagram(b *strings.Builder, s *session, evs []event, start time.Time) {
	var rows strings.Builder
	y := headerH
	tlsFrom := -1
	var bands []([2]int)
	for _, e := range evs {
		h := rowHeight(e)
		rel := fmt.Sprintf("+%.3f s", e.time.Sub(start).Seconds())
		fmt.Fprintf(&rows, `<text class="t" x="4" y="%d">%s</text>`, y+16, rel)
		switch e.kind {
		case evLine:
			drawLine(&rows, s, e, y)
		case evDecision:
			drawDecision(&rows, e, y)
		case evDataStarted, evDataDropped:
			drawData(&rows, s, e, y)
		case evClosedUnused:
			fmt.Fprintf(&rows, `<g class="closed-unused"><text x="%d" y="%d" text-anchor="middle">pinhole for %s closed unused: %s</text></g>`,
				xFirewall, y+16, esc(netip.AddrPortFrom(e.ch.RespH, e.ch.RespP).String()), esc(e.text))
		case evTLSStart:
			tlsFrom = y
			fmt.Fprintf(&rows, `<g class="tls-start"><text x="%d" y="%d" text-anchor="middle">TLS begins: from here the firewall cannot read commands, replies or announcements</text></g>`, xFirewall, y+18)
		case evTLSEnd:
			if tlsFrom >= 0 {
				bands = append(bands, [2]int{tlsFrom, y + 4})
				tlsFrom = -1
			}
			fmt.Fprintf(&rows, `<g class="tls-end"><text x="%d" y="%d" text-anchor="middle">CCC accepted and TLS closed: clear text again</text></g>`, xFirewall, y+18)
		case evEnd:
			fmt.Fprintf(&rows, `<g class="end"><line x1="%d" x2="%d" y1="%d" y2="%d"/><text x="%d" y="%d" text-anchor="middle">session end: %s</text></g>`,
				xClient, xServer, y+6, y+6, xFirewall, y+20, esc(e.text))
		}
		y += h
	}
	if tlsFrom >= 0 {
		bands = append(bands, [2]int{tlsFrom, y})
	}
	height := y + 8
	fmt.Fprintf(b, `<svg class="diagram" viewBox="0 0 %d %d" width="%d" height="%d" role="img" aria-label="sequence diagram of session %s">`,
		svgWidth, height, svgWidth, height, esc(s.id))
	for _, band := range bands {
		fmt.Fprintf(b, `<rect class="tls-band" x="%d" y="%d" width="%d" height="%d"/>`, xClient-60, band[0], xServer-xClient+120, band[1]-band[0])
	}
	for _, l := range []struct {
		x           int
		name, label string
		cls         string
	}{
		{xClient, "client", s.client.String(), "life-client"},
		{xFirewall, "firewall", "ftpgate", "life-firewall"},
		{xServer, "server", s.server.String(), "life-server"},
	} {
		fmt.Fprintf(b, `<g class="lifeline %s"><rect x="%d" y="4" width="200" height="40" rx="5"/><text x="%d" y="20" text-anchor="middle" class="who">%s</text><text x="%d" y="37" text-anchor="middle">%s</text><line x1="%d" x2="%d" y1="44" y2="%d"/></g>`,
			l.cls, l.x-100, l.x, l.name, l.x, esc(l.label), l.x, l.x, height)
	}
	b.WriteString(rows.String())
	b.WriteString("</svg>\n")
}

func rowHeight(e event) int {
	switch e.kind {
	case evLine:
		if e.announces.IsValid() {
			return 40
		}
		return 24
	case evDecision:
		if e.ch.Verdict != conntrack.VerdictOpen {
			return refusedHeight(e)
		}
		return 36
	case evDataStarted, evDataDropped, evTLSStart, evTLSEnd:
		return 36
	}
	return 28
}

func drawLine(b *strings.Builder, s *session, e event, y int) {
	x1, x2, from := xClient, xServer, "client"
	if e.fromServer {
		x1, x2, from = xServer, xClient, "server"
	}
	cls := "line from-" + from
	if e.announces.IsValid() {
		cls += " announce"
	}
	shown := truncate(e.text, 70)
	fmt.Fprintf(b, `<g class="%s"><title>%s</title><line x1="%d" x2="%d" y1="%d" y2="%d" marker-end="url(#arrow)"/><text x="%d" y="%d" text-anchor="middle">%s</text>`,
		cls, esc(e.text), x1, x2, y+18, y+18, xFirewall, y+13, esc(shown))
	if e.announces.IsValid() {
		who := "the client listens on"
		if e.fromServer {
			who = "the server listens on"
		}
		fmt.Fprintf(b, `<text class="announced" x="%d" y="%d" text-anchor="middle" data-endpoint="%s">announces: %s %s</text>`,
			xFirewall, y+33, esc(e.announces.String()), who, esc(e.announces.String()))
	}
	b.WriteString("</g>")
}

func drawDecision(b *strings.Builder, e event, y int) {
	c := e.ch
	target := netip.AddrPortFrom(c.RespH, c.RespP).String()
	mode := "active mode: the server connects back"
	if c.Passive {
		mode = "passive mode: the client connects"
	}
	if c.Verdict == conntrack.VerdictOpen {
		text := fmt.Sprintf("opens a pinhole: %s may connect to %s once (%s)", c.OrigH, target, mode)
		if c.MappedTo.IsValid() {
			text += ", mapped to " + c.MappedTo.String()
		}
		fmt.Fprintf(b, `<g class="decision opened" data-target="%s"><rect x="%d" y="%d" width="%d" height="26" rx="4"/><text x="%d" y="%d" text-anchor="middle">%s</text></g>`,
			esc(target), xClient-40, y+4, xServer-xClient+80, xFirewall, y+21, esc(text))
		return
	}
	text := refusalText(c)
	first, second := splitLine(truncate(text, 220), 110)
	fmt.Fprintf(b, `<g class="decision refused" data-target="%s" data-reason="%s"><title>%s</title><rect x="%d" y="%d" width="%d" height="%d" rx="4"/><text x="%d" y="%d" text-anchor="middle">%s</text>`,
		esc(target), esc(c.Reason), esc(text), xClient-58, y+4, xServer-xClient+116, refusedHeight(e)-10, xFirewall, y+19, esc(first))
	if second != "" {
		fmt.Fprintf(b, `<text x="%d" y="%d" text-anchor="middle">%s</text>`, xFirewall, y+34, esc(second))
	}
	b.WriteString("</g>")
}

// refusedHeight is the row of a refusal: two lines of text when long.
func refusedHeight(e event) int {
	if _, second := splitLine(truncate(refusalText(e.ch), 220), 110); second != "" {
		return 50
	}
	return 36
}

func refusalText(c *conntrack.Channel) string {
	return "refuses " + netip.AddrPortFrom(c.RespH, c.RespP).String() + ": " + c.Reason
}

// truncate shortens s to at most n bytes, on a character boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// splitLine breaks s in two at a space near its middle when it is longer
// than n bytes.
func splitLine(s string, n int) (string, string) {
	if len(s) <= n {
		return s, ""
	}
	mid := len(s) / 2
	if i := strings.LastIndexByte(s[:mid+10], ' '); i > 0 {
		return s[:i], s[i+1:]
	}
	return s, ""
}

// drawData draws the data connection in the direction it went: from
// the host the channel let connect (OrigH) to the announced address.
func drawData(b *strings.Builder, s *session, e event, y int) {
	c := e.ch
	fromX, toX, dir := xClient, xServer, "client-to-server"
	if c.OrigH != s.client.Addr() {
		fromX, toX, dir = xServer, xClient, "server-to-client"
	}
	mode := "active"
	who := "the server connects back to the client"
	if c.Passive {
		mode, who = "passive", "the client connects to the server"
	}
	target := netip.AddrPortFrom(c.RespH, c.RespP).String()
	if e.kind == evDataStarted {
		fmt.Fprintf(b, `<g class="data-conn started mode-%s" data-direction="%s" data-mode="%s" data-target="%s"><line x1="%d" x2="%d" y1="%d" y2="%d" marker-end="url(#data-arrow)"/><text x="%d" y="%d" text-anchor="middle">data connection to %s (%s), %s after the pinhole opened</text></g>`,
			mode, dir, mode, esc(target), fromX, toX, y+24, y+24, xFirewall, y+15, esc(target), who, e.wait.Round(time.Microsecond*100))
		return
	}
	tries := ""
	if e.tries > 1 {
		tries = fmt.Sprintf(", %d SYNs", e.tries)
	}
	fmt.Fprintf(b, `<g class="data-conn dropped mode-%s" data-direction="%s" data-mode="%s" data-target="%s"><line x1="%d" x2="%d" y1="%d" y2="%d"/><path class="x" d="M%d %d l12 12 m0 -12 l-12 12"/><text x="%d" y="%d" text-anchor="middle">%s tries %s: dropped by the firewall%s</text></g>`,
		mode, dir, mode, esc(target), fromX, xFirewall, y+24, y+24, xFirewall-6, y+18, xFirewall, y+13, esc(e.from.Addr().String()), esc(target), tries)
}

func esc(s string) string { return html.EscapeString(s) }

const css = `
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em auto;max-width:960px;color:#1d2330;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.5em}
.source{color:#555;margin-top:0}.note{color:#666;font-style:italic}
.legend{background:#f6f7f9;border:1px solid #dde1e7;border-radius:6px;padding:.6em 1em}
.legend .passive,.counts .passive,.badge-passive{color:#1f5fbf;font-weight:600}
.legend .active,.counts .active{color:#b35900;font-weight:600}
table.counts{border-collapse:collapse;margin:.6em 1.5em .6em 0;display:inline-table;vertical-align:top}
.counts th,.counts td{border:1px solid #dde1e7;padding:.2em .6em;text-align:left}
.counts td{font-variant-numeric:tabular-nums}
.counts .reason{max-width:520px}
nav.controls{margin:.5em 0 1em}
.page{display:none}.page.current{display:block}
details.session{border:1px solid #dde1e7;border-left:6px solid #999;border-radius:6px;margin:.8em 0;padding:.3em .6em;overflow-x:auto}
details.session.mode-passive{border-left-color:#1f5fbf}
details.session.mode-active{border-left-color:#b35900}
details.session.mode-both{border-left-color:#7a3fb3}
details.session[data-encrypted="true"]{border-left-style:double}
summary{cursor:pointer}
.badge{display:inline-block;border-radius:4px;padding:0 .4em;color:#fff;background:#777;font-size:.9em}
.mode-passive .badge{background:#1f5fbf}.mode-active .badge{background:#b35900}.mode-both .badge{background:#7a3fb3}
.refused{color:#b00020;font-weight:600}
body.filter-passive details.session:not(.mode-passive):not(.mode-both),
body.filter-active details.session:not(.mode-active):not(.mode-both),
body.filter-refused details.session[data-refused="0"],
body.filter-encrypted details.session[data-encrypted="false"]{display:none}
svg.diagram{display:block;margin:.5em 0;font-size:12px}
svg text{fill:#1d2330}
.t{fill:#777;font-size:10px}
.lifeline rect{fill:#eef1f5;stroke:#9aa5b5}.lifeline line{stroke:#9aa5b5;stroke-dasharray:4 3}
.life-firewall rect{fill:#fff4e0;stroke:#d19a3a}.life-firewall line{stroke:#d19a3a}
.who{font-weight:700}
g.line line{stroke:#3a4150;stroke-width:1.2}
g.line text{paint-order:stroke;stroke:#fff;stroke-width:4px;font-family:ui-monospace,Menlo,Consolas,monospace}
g.line text.announced{font-family:inherit}
g.announce line{stroke:#7a3fb3;stroke-width:2}
g.announce text{font-weight:700}
text.announced{fill:#7a3fb3}
g.decision.opened rect{fill:#e6f4ea;stroke:#2e7d32}
g.decision.refused rect{fill:#fdecee;stroke:#b00020}
g.decision.refused text{fill:#b00020;font-weight:600;font-size:11px}
g.data-conn line{stroke-width:3.5;stroke-dasharray:10 5}
g.data-conn.mode-passive line{stroke:#1f5fbf}g.data-conn.mode-active line{stroke:#b35900}
g.data-conn text{paint-order:stroke;stroke:#fff;stroke-width:4px;font-weight:600}
g.data-conn.dropped path.x{stroke:#b00020;stroke-width:3}
g.data-conn.dropped text{fill:#b00020}
g.closed-unused text{fill:#777;font-style:italic}
g.end line{stroke:#bbb}g.end text{fill:#555}
rect.tls-band{fill:url(#hatch);stroke:#888;stroke-dasharray:2 2}
g.tls-start text,g.tls-end text{font-weight:600;fill:#444;paint-order:stroke;stroke:#fff;stroke-width:4px}
`

const defs = `<svg width="0" height="0" style="position:absolute" aria-hidden="true"><defs>
<marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0 0L10 5L0 10z" fill="#3a4150"/></marker>
<marker id="data-arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="5" markerHeight="5" orient="auto-start-reverse"><path d="M0 0L10 5L0 10z" fill="#333"/></marker>
<pattern id="hatch" width="8" height="8" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="8" height="8" fill="#f1f1f1"/><line x1="0" y1="0" x2="0" y2="8" stroke="#d6d6d6" stroke-width="4"/></pattern>
</defs></svg>
`

const legend = `<section class="legend" id="legend"><h2>Reading the diagrams</h2>
<p>FTP uses two kinds of TCP connection. The <b>control connection</b> goes from the
client to the server's port 21 and carries the commands and replies drawn as thin
arrows. Every file or listing travels on a separate <b>data connection</b>, drawn as a
thick dashed arrow, whose address and port one side announces on the control connection.
In <span class="passive">passive mode</span> (PASV, EPSV) the server announces a port it
listens on and the <i>client connects</i> to it: the data arrow goes from client to server.
In <span class="active">active mode</span> (PORT, EPRT) the client announces a port it
listens on and the <i>server connects back</i> to it, traditionally from its port 20: the
data arrow goes from server to client. Active mode is what breaks behind NAT and strict
firewalls: the client announces an address the server may not be able to reach, and the
connection comes in from outside, which a firewall that only allows outgoing connections
drops. A firewall that drops everything not asked for must read the announcement to let
exactly that one data connection through: the middle lifeline shows ftpgate doing that,
with its decision in green (a pinhole opened, for that one connection) or red (refused,
and why). When the control connection is encrypted (FTPS), the announcements are
hidden: the hatched stretch.</p></section>
`

const script = `
(function(){
  var pages=document.querySelectorAll('.page'), cur=0;
  var no=document.getElementById('pageno');
  function show(i){ if(i<0||i>=pages.length) return; pages[cur].classList.remove('current'); cur=i; pages[cur].classList.add('current'); if(no) no.textContent='page '+(cur+1)+' of '+pages.length; }
  var p=document.getElementById('prev'), n=document.getElementById('next');
  if(p) p.addEventListener('click',function(){show(cur-1)});
  if(n) n.addEventListener('click',function(){show(cur+1)});
  var f=document.getElementById('filter');
  if(f) f.addEventListener('change',function(){
    document.body.className=document.body.className.replace(/\bfilter-\w+/g,'').trim();
    if(f.value!=='all'){ document.body.classList.add('filter-'+f.value); for(var i=0;i<pages.length;i++) pages[i].classList.add('current'); }
    else { for(var i=0;i<pages.length;i++) pages[i].classList.toggle('current', i===cur); }
  });
  var fo=document.getElementById('follow');
  if(fo){
    try { fo.checked = sessionStorage.getItem('ftpgate-follow')==='1'; } catch(e) {}
    var timer=null;
    function follow(){ if(timer) clearInterval(timer); timer=null; if(fo.checked) timer=setInterval(function(){ location.reload(); },5000); }
    fo.addEventListener('change',function(){ try { sessionStorage.setItem('ftpgate-follow', fo.checked?'1':'0'); } catch(e) {} follow(); });
    follow();
  }
})();
`
