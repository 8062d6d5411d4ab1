package rules

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// nftText says what a message of a golden file does, in nft's words, so
// that a reviewer of testdata/*.golden reads the change, not only the
// bytes. It is derived from the bytes alone (rules are parsed back by
// google/nftables), so it cannot say what the message does not. The
// text is close to what nft prints, but lower-level: registers are
// followed, not pretty-printed (ct mark & 0xfeffffff ^ 0x01000000 where
// nft says ct mark | 0x01000000). "" for the batch delimiters.
func nftText(m netlink.Message) string {
	ad, err := netlink.NewAttributeDecoder(m.Data[4:])
	if err != nil {
		return "(undecodable: " + err.Error() + ")"
	}
	ad.ByteOrder = binary.BigEndian
	attrs := map[uint16][]byte{}
	for ad.Next() {
		attrs[ad.Type()] = ad.Bytes()
	}
	str := func(t uint16) string { return strings.TrimRight(string(attrs[t]), "\x00") }
	switch uint16(m.Header.Type) & 0xff {
	case unix.NFT_MSG_NEWTABLE:
		t := "add table inet " + str(unix.NFTA_TABLE_NAME)
		if f := attrs[unix.NFTA_TABLE_FLAGS]; len(f) == 4 && binary.BigEndian.Uint32(f)&uint32(nftables.TableFlagOwner) != 0 {
			t += " { flags owner; }"
		}
		return t
	case unix.NFT_MSG_NEWCHAIN:
		return chainText(str(unix.NFTA_CHAIN_TABLE), str(unix.NFTA_CHAIN_NAME), str(unix.NFTA_CHAIN_TYPE), attrs[unix.NFTA_CHAIN_HOOK])
	case unix.NFT_MSG_DELRULE:
		return fmt.Sprintf("flush chain inet %s %s", str(unix.NFTA_RULE_TABLE), str(unix.NFTA_RULE_CHAIN))
	case unix.NFT_MSG_NEWSET:
		return setText(attrs, str)
	case unix.NFT_MSG_NEWSETELEM, unix.NFT_MSG_DELSETELEM:
		verb := "add"
		if uint16(m.Header.Type)&0xff == unix.NFT_MSG_DELSETELEM {
			verb = "delete"
		}
		return fmt.Sprintf("%s element inet %s %s { %s }", verb, str(unix.NFTA_SET_ELEM_LIST_TABLE), str(unix.NFTA_SET_ELEM_LIST_SET),
			elementsText(attrs[unix.NFTA_SET_ELEM_LIST_ELEMENTS]))
	case unix.NFT_MSG_NEWRULE:
		return ruleText(m, str(unix.NFTA_RULE_TABLE), str(unix.NFTA_RULE_CHAIN))
	}
	return ""
}

func chainText(table, name, typ string, hook []byte) string {
	t := fmt.Sprintf("add chain inet %s %s", table, name)
	if hook == nil {
		return t
	}
	ad, err := netlink.NewAttributeDecoder(hook)
	if err != nil {
		return t + " (undecodable hook)"
	}
	ad.ByteOrder = binary.BigEndian
	var num uint32
	var prio int32
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_HOOK_HOOKNUM:
			num = ad.Uint32()
		case unix.NFTA_HOOK_PRIORITY:
			prio = int32(ad.Uint32())
		}
	}
	hooks := map[uint32]string{0: "prerouting", 1: "input", 2: "forward", 3: "output", 4: "postrouting"}
	return fmt.Sprintf("%s { type %s hook %s priority %d; }", t, typ, hooks[num], prio)
}

func setText(attrs map[uint16][]byte, str func(uint16) string) string {
	u32 := func(t uint16) uint32 {
		if len(attrs[t]) != 4 {
			return 0
		}
		return binary.BigEndian.Uint32(attrs[t])
	}
	kind := "set"
	flags := u32(unix.NFTA_SET_FLAGS)
	if flags&unix.NFT_SET_MAP != 0 {
		kind = "map"
	}
	typ := typeText(u32(unix.NFTA_SET_KEY_TYPE))
	if kind == "map" {
		typ += " : " + typeText(u32(unix.NFTA_SET_DATA_TYPE))
	}
	var fl []string
	for _, f := range []struct {
		bit  uint32
		name string
	}{{unix.NFT_SET_EVAL, "dynamic"}, {unix.NFT_SET_INTERVAL, "interval"}, {unix.NFT_SET_TIMEOUT, "timeout"}} {
		if flags&f.bit != 0 {
			fl = append(fl, f.name)
		}
	}
	t := fmt.Sprintf("add %s inet %s %s { type %s;", kind, str(unix.NFTA_SET_TABLE), str(unix.NFTA_SET_NAME), typ)
	if len(fl) > 0 {
		t += " flags " + strings.Join(fl, ",") + ";"
	}
	if to := attrs[unix.NFTA_SET_TIMEOUT]; len(to) == 8 {
		t += fmt.Sprintf(" timeout %dms;", binary.BigEndian.Uint64(to))
	}
	if desc, err := netlink.NewAttributeDecoder(attrs[unix.NFTA_SET_DESC]); err == nil && attrs[unix.NFTA_SET_DESC] != nil {
		desc.ByteOrder = binary.BigEndian
		for desc.Next() {
			if desc.Type() == unix.NFTA_SET_DESC_SIZE {
				t += fmt.Sprintf(" size %d;", desc.Uint32())
			}
		}
	}
	if e := attrs[nftaSetExpr]; e != nil {
		t += " " + setExprText(e) + ";"
	}
	if c, ok := userdata.GetString(attrs[unix.NFTA_SET_USERDATA], userdata.NFTNL_UDATA_SET_COMMENT); ok {
		t += fmt.Sprintf(" comment %q;", c)
	}
	return t + " }"
}

// setExprText reads the one stateful expression of the pinhole sets.
func setExprText(b []byte) string {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return "(undecodable expression)"
	}
	ad.ByteOrder = binary.BigEndian
	name, vals := "", map[uint16]uint64{}
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_EXPR_NAME:
			name = strings.TrimRight(ad.String(), "\x00")
		case unix.NFTA_EXPR_DATA:
			ad.Nested(func(nd *netlink.AttributeDecoder) error {
				for nd.Next() {
					switch len(nd.Bytes()) {
					case 8:
						vals[nd.Type()] = nd.Uint64()
					case 4:
						vals[nd.Type()] = uint64(nd.Uint32())
					}
				}
				return nil
			})
		}
	}
	if name != "limit" {
		return name
	}
	unit := map[uint64]string{1: "second", 60: "minute", 3600: "hour", 86400: "day", 604800: "week"}[vals[unix.NFTA_LIMIT_UNIT]]
	return fmt.Sprintf("limit rate %d/%s burst %d packets", vals[unix.NFTA_LIMIT_RATE], unit, vals[unix.NFTA_LIMIT_BURST])
}

func typeText(t uint32) string {
	names := map[uint32]string{typeIPAddr: "ipv4_addr", typeIP6Addr: "ipv6_addr", typeInetService: "inet_service", 41: "ifname"}
	var parts []string
	for ; t != 0; t >>= typeBits {
		n, ok := names[t&(1<<typeBits-1)]
		if !ok {
			return fmt.Sprintf("type %#x", t)
		}
		parts = append([]string{n}, parts...)
	}
	return strings.Join(parts, " . ")
}

// elementsText reads an element list: key, interval end, data, timeout.
func elementsText(b []byte) string {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return "(undecodable elements)"
	}
	ad.ByteOrder = binary.BigEndian
	value := func(nd *netlink.AttributeDecoder) (v []byte) {
		nd.Nested(func(d *netlink.AttributeDecoder) error {
			for d.Next() {
				if d.Type() == unix.NFTA_DATA_VALUE {
					v = d.Bytes()
				}
			}
			return nil
		})
		return v
	}
	var elems []string
	for ad.Next() {
		var e string
		ad.Nested(func(nd *netlink.AttributeDecoder) error {
			for nd.Next() {
				switch nd.Type() {
				case unix.NFTA_SET_ELEM_KEY:
					e += valueText(value(nd), false)
				case 10: // NFTA_SET_ELEM_KEY_END
					e += "-" + valueText(value(nd), false)
				case unix.NFTA_SET_ELEM_DATA:
					e += " : " + valueText(value(nd), true)
				case unix.NFTA_SET_ELEM_TIMEOUT:
					e += fmt.Sprintf(" timeout %dms", nd.Uint64())
				}
			}
			return nil
		})
		elems = append(elems, e)
	}
	return strings.Join(elems, ", ")
}

// valueText reads a key or a datum of ftpgate's sets by its length.
func valueText(v []byte, data bool) string {
	addr := func(b []byte) string { a, _ := netip.AddrFromSlice(b); return a.String() }
	port := func(b []byte) string { return fmt.Sprint(binary.BigEndian.Uint16(b)) }
	switch len(v) {
	case 4:
		return addr(v)
	case 8:
		if data {
			return addr(v[:4]) + " . " + port(v[4:])
		}
		return addr(v[:4]) + " . " + addr(v[4:])
	case 12:
		return addr(v[:4]) + " . " + addr(v[4:8]) + " . " + port(v[8:])
	case 20:
		return addr(v[:16]) + " . " + port(v[16:])
	case 32:
		return addr(v[:16]) + " . " + addr(v[16:])
	case 36:
		return addr(v[:16]) + " . " + addr(v[16:32]) + " . " + port(v[32:])
	case 16:
		if s := strings.TrimRight(string(v), "\x00"); s != "" && !strings.ContainsFunc(s, func(r rune) bool { return r < ' ' || r > '~' }) {
			return fmt.Sprintf("%q", s)
		}
		return addr(v)
	}
	return fmt.Sprintf("0x%x", v)
}

// ruleText parses a rule message back with google/nftables, as if the
// kernel had listed it, and follows its registers.
func ruleText(m netlink.Message, table, chain string) string {
	conn, err := nftables.New(nftables.WithTestDial(func(req []netlink.Message) ([]netlink.Message, error) {
		if len(req) == 0 {
			return nil, nil
		}
		return dumpReply(req[0], []netlink.Message{{Header: netlink.Header{Type: m.Header.Type}, Data: m.Data}}), nil
	}))
	if err != nil {
		return "(" + err.Error() + ")"
	}
	t := &nftables.Table{Name: table, Family: nftables.TableFamilyINet}
	rules, err := conn.GetRules(t, &nftables.Chain{Name: chain, Table: t})
	if err != nil || len(rules) != 1 {
		return fmt.Sprintf("(unparsed rule: %v)", err)
	}
	r := rules[0]
	var w exprWriter
	w.regs = map[uint32]string{}
	// google/nftables drops what it cannot parse (tproxy, socket) and
	// the direction of most ct keys: those are read from the raw list.
	exprs := r.Exprs
	for _, raw := range rawExprs(m) {
		switch raw.name {
		case "tproxy":
			fam := map[uint32]string{unix.NFPROTO_IPV4: "ip", unix.NFPROTO_IPV6: "ip6"}[raw.u32[1]]
			addr := w.regs[raw.u32[2]]
			if strings.Contains(addr, ":") {
				addr = "[" + addr + "]"
			}
			w.out = append(w.out, fmt.Sprintf("tproxy %s to %s:%s", fam, addr, w.regs[raw.u32[3]]))
			continue
		case "socket":
			w.load(raw.u32[2], "socket transparent")
			continue
		}
		if len(exprs) == 0 {
			w.out = append(w.out, "("+raw.name+"?)")
			continue
		}
		e := exprs[0]
		exprs = exprs[1:]
		if ct, ok := e.(*expr.Ct); ok && raw.has[unix.NFTA_CT_DIRECTION] {
			ct.OptDirection = true
		}
		w.write(e)
	}
	text := fmt.Sprintf("add rule inet %s %s %s", table, chain, strings.Join(w.out, " "))
	if c, ok := userdata.GetString(r.UserData, userdata.TypeComment); ok {
		text += fmt.Sprintf(" comment %q", c)
	}
	return text
}

// exprWriter turns expressions into nft statements, remembering what
// each register holds.
type exprWriter struct {
	regs   map[uint32]string
	concat []string // what the 32-bit registers from keyReg on hold, in order
	out    []string
}

func (w *exprWriter) load(reg uint32, what string) {
	w.regs[reg] = what
	switch {
	case reg == keyReg:
		w.concat = []string{what}
	case reg > keyReg:
		w.concat = append(w.concat, what)
	}
}

// from is what a lookup or a statement reads from reg on.
func (w *exprWriter) from(reg uint32) string {
	if reg == keyReg && len(w.concat) > 1 {
		return strings.Join(w.concat, " . ")
	}
	return w.regs[reg]
}

var (
	metaKeys = map[expr.MetaKey]string{expr.MetaKeyL4PROTO: "l4proto", expr.MetaKeyNFPROTO: "nfproto", expr.MetaKeyMARK: "mark",
		expr.MetaKeyIIFNAME: "iifname", expr.MetaKeyOIFNAME: "oifname"}
	ctKeys = map[expr.CtKey]string{expr.CtKeySTATE: "state", expr.CtKeyMARK: "mark", expr.CtKeySTATUS: "status",
		expr.CtKeySRCIP: "ip saddr", expr.CtKeyDSTIP: "ip daddr", expr.CtKeySRCIP6: "ip6 saddr", expr.CtKeyDSTIP6: "ip6 daddr",
		expr.CtKeyPROTOSRC: "proto-src", expr.CtKeyPROTODST: "proto-dst"}
	verdicts = map[expr.VerdictKind]string{expr.VerdictAccept: "accept", expr.VerdictDrop: "drop", expr.VerdictReturn: "return",
		expr.VerdictJump: "jump", expr.VerdictGoto: "goto"}
)

func payloadText(e *expr.Payload) string {
	switch {
	case e.Base == expr.PayloadBaseNetworkHeader:
		return map[[2]uint32]string{{12, 4}: "ip saddr", {16, 4}: "ip daddr", {8, 16}: "ip6 saddr", {24, 16}: "ip6 daddr"}[[2]uint32{e.Offset, e.Len}]
	case e.Base == expr.PayloadBaseTransportHeader && e.Len == 2 && e.Offset <= 2:
		return map[uint32]string{0: "th sport", 2: "th dport"}[e.Offset]
	case e.Base == expr.PayloadBaseTransportHeader && e.Offset == 13 && e.Len == 1:
		return "tcp flags"
	case e.Base == payloadBaseInnerHeader:
		return fmt.Sprintf("@ih,%d,%d", e.Offset*8, e.Len*8)
	}
	return fmt.Sprintf("@base%d,%d,%d", e.Base, e.Offset*8, e.Len*8)
}

// valueOf writes a constant compared with (or loaded into) what lhs is.
func valueOf(lhs string, b []byte) string {
	switch {
	case strings.HasSuffix(lhs, "l4proto") && len(b) == 1:
		return map[byte]string{unix.IPPROTO_TCP: "tcp", unix.IPPROTO_UDP: "udp"}[b[0]]
	case strings.HasSuffix(lhs, "nfproto") && len(b) == 1:
		return map[byte]string{unix.NFPROTO_IPV4: "ipv4", unix.NFPROTO_IPV6: "ipv6"}[b[0]]
	case strings.Contains(lhs, "addr") && (len(b) == 4 || len(b) == 16):
		a, _ := netip.AddrFromSlice(b)
		return a.String()
	case (strings.Contains(lhs, "port") || strings.Contains(lhs, "proto-")) && len(b) == 2:
		return fmt.Sprint(binary.BigEndian.Uint16(b))
	case strings.HasSuffix(lhs, "name") && len(b) == 16:
		return fmt.Sprintf("%q", strings.TrimRight(string(b), "\x00"))
	case len(b) == 4:
		return fmt.Sprintf("%#08x", binary.NativeEndian.Uint32(b))
	}
	return fmt.Sprintf("0x%x", b)
}

func (w *exprWriter) write(e expr.Any) {
	switch e := e.(type) {
	case *expr.Meta:
		if e.SourceRegister {
			w.out = append(w.out, fmt.Sprintf("meta %s set %s", metaKeys[e.Key], w.regs[e.Register]))
		} else if k := metaKeys[e.Key]; strings.HasSuffix(k, "ifname") {
			w.load(e.Register, k)
		} else {
			w.load(e.Register, "meta "+k)
		}
	case *expr.Ct:
		dir := ""
		if e.OptDirection {
			dir = "original "
		}
		if e.SourceRegister {
			w.out = append(w.out, fmt.Sprintf("ct %s%s set %s", dir, ctKeys[e.Key], w.regs[e.Register]))
		} else {
			w.load(e.Register, "ct "+dir+ctKeys[e.Key])
		}
	case *expr.Payload:
		w.load(e.DestRegister, payloadText(e))
	case *expr.Bitwise:
		t := w.regs[e.SourceRegister] + " & " + valueOf("", e.Mask)
		if strings.Trim(string(e.Xor), "\x00") != "" {
			t += " ^ " + valueOf("", e.Xor)
		}
		w.load(e.DestRegister, t)
	case *expr.Cmp:
		ops := map[expr.CmpOp]string{expr.CmpOpEq: "==", expr.CmpOpNeq: "!=", expr.CmpOpLt: "<", expr.CmpOpLte: "<=", expr.CmpOpGt: ">", expr.CmpOpGte: ">="}
		lhs := w.regs[e.Register]
		if strings.HasPrefix(lhs, "fib ") && e.Op == expr.CmpOpEq && strings.Trim(string(e.Data), "\x00") == "" {
			w.out = append(w.out, lhs+" missing")
			return
		}
		w.out = append(w.out, fmt.Sprintf("%s %s %s", lhs, ops[e.Op], valueOf(lhs, e.Data)))
	case *expr.Lookup:
		op := ""
		if e.Invert {
			op = "!= "
		}
		if e.IsDestRegSet {
			w.load(e.DestRegister, fmt.Sprintf("%s map @%s", w.from(e.SourceRegister), e.SetName))
		} else {
			w.out = append(w.out, fmt.Sprintf("%s %s@%s", w.from(e.SourceRegister), op, e.SetName))
		}
	case *expr.Dynset:
		op := map[uint32]string{unix.NFT_DYNSET_OP_ADD: "add", unix.NFT_DYNSET_OP_UPDATE: "update", dynsetOpDelete: "delete"}[e.Operation]
		w.out = append(w.out, fmt.Sprintf("%s @%s { %s }", op, e.SetName, w.from(e.SrcRegKey)))
	case *expr.Immediate:
		w.load(e.Register, valueOf(map[int]string{4: "addr", 16: "addr", 2: "port"}[len(e.Data)], e.Data))
	case *expr.Verdict:
		v := verdicts[e.Kind]
		if e.Chain != "" {
			v += " " + e.Chain
		}
		w.out = append(w.out, v)
	case *expr.Counter:
		w.out = append(w.out, "counter")
	case *expr.Log:
		w.out = append(w.out, logText(e))
	case *expr.Queue:
		q := fmt.Sprintf("queue num %d", e.Num)
		if e.Flag&expr.QueueFlagBypass != 0 {
			q += " bypass"
		}
		w.out = append(w.out, q)
	case *expr.Target:
		w.out = append(w.out, fmt.Sprintf("xt target %s rev %d", e.Name, e.Rev))
	case *expr.Fib:
		w.load(e.Register, "fib saddr . iif oif")
	case *expr.NAT:
		kind := map[expr.NATType]string{expr.NATTypeDestNAT: "dnat", expr.NATTypeSourceNAT: "snat"}[e.Type]
		fam := map[uint32]string{unix.NFPROTO_IPV4: "ip", unix.NFPROTO_IPV6: "ip6"}[e.Family]
		w.out = append(w.out, fmt.Sprintf("%s %s to %s", kind, fam, w.regs[e.RegAddrMin]))
	default:
		w.out = append(w.out, fmt.Sprintf("(%T)", e))
	}
}

func logText(e *expr.Log) string {
	t := "log"
	if e.Key&(1<<unix.NFTA_LOG_PREFIX) != 0 {
		t += fmt.Sprintf(" prefix %q", strings.TrimRight(string(e.Data), "\x00"))
	}
	if e.Key&(1<<unix.NFTA_LOG_GROUP) != 0 {
		t += fmt.Sprintf(" group %d", e.Group)
	}
	if e.Key&(1<<unix.NFTA_LOG_SNAPLEN) != 0 {
		t += fmt.Sprintf(" snaplen %d", e.Snaplen)
	}
	if e.Key&(1<<unix.NFTA_LOG_QTHRESHOLD) != 0 {
		t += fmt.Sprintf(" queue-threshold %d", e.QThreshold)
	}
	return t
}

// rawExpr is one expression of a rule message as sent: its name, which
// attributes it has, and their values as 32-bit numbers.
type rawExpr struct {
	name string
	has  map[uint16]bool
	u32  map[uint16]uint32
}

func rawExprs(m netlink.Message) []rawExpr {
	var out []rawExpr
	ad, err := netlink.NewAttributeDecoder(m.Data[4:])
	if err != nil {
		return nil
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		if ad.Type() != unix.NFTA_RULE_EXPRESSIONS {
			continue
		}
		ad.Nested(func(list *netlink.AttributeDecoder) error {
			for list.Next() {
				e := rawExpr{has: map[uint16]bool{}, u32: map[uint16]uint32{}}
				list.Nested(func(x *netlink.AttributeDecoder) error {
					for x.Next() {
						switch x.Type() {
						case unix.NFTA_EXPR_NAME:
							e.name = strings.TrimRight(x.String(), "\x00")
						case unix.NFTA_EXPR_DATA:
							x.Nested(func(d *netlink.AttributeDecoder) error {
								for d.Next() {
									e.has[d.Type()] = true
									if b := d.Bytes(); len(b) == 4 {
										e.u32[d.Type()] = binary.BigEndian.Uint32(b)
									}
								}
								return nil
							})
						}
					}
					return nil
				})
				out = append(out, e)
			}
			return nil
		})
	}
	return out
}
