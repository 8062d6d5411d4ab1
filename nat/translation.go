// Package nat is ftpgate's NAT path: what the admin's NAT rules did to a
// control connection (Translation), the public ports ftpgate hands out
// for rewritten announcements (Ports), and the control proxy that
// carries translated control connections through the gateway (Proxy).
//
// What a line says and how it is rewritten is the parser's business;
// which announcements open what is conntrack's. This package is how the
// bytes get through.
package nat

import "net/netip"

// Translation is what the admin's NAT rules did to one control
// connection, as the control proxy learnt it from the kernel.
type Translation struct {
	// Client and Server are the two ends as they are: the client's own
	// address, and the server's after destination NAT.
	Client, Server netip.AddrPort
	// ServerSeen is the server as the client addressed it (before
	// destination NAT); ClientSeen the client as the server sees it
	// (after source NAT; the port is the proxy's connection's).
	ServerSeen, ClientSeen netip.AddrPort
	// HelperAttached: a helper was attached to the connection (IPS_HELPER):
	// where the kernel shifts, ftpgate's stub, before NAT, which gave it
	// the kernel's sequence adjustment (rules.NATConfig.KernelShifts).
	HelperAttached bool
}

// Translated reports whether either end sees the other under another
// address.
func (tr Translation) Translated() bool {
	return tr.ClientSeen.Addr() != tr.Client.Addr() || tr.ServerSeen.Addr() != tr.Server.Addr()
}
